"""The Python API: what `import synthledger` offers a script or a notebook.

    import synthledger
    result = synthledger.generate("run.toml", name="gsm-aa-2", overrides=["budget.usd=0.5"])
    store = synthledger.open_store()                # the same store the CLI would use
    ds = store.dataset(result.run_id)               # a datasets.Dataset with a `messages` column

`generate` works the same in a plain script and inside a running event loop (a Jupyter cell): there
it drives the run on a worker thread, since a second loop cannot run in the first one's thread.
`agenerate` is the async form for code that already awaits. Everything the CLI checks is checked
here too, with the same one-line errors (as exceptions): bad config, taken run name, missing store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ..store.eventstore import EventStore, RunInfo
from .errors import ConfigError, MissingExtra
from .python_terms import python_terms, result_in_python_terms
from .run.config import RunConfig, apply_overrides, config_from_dict, load_config as _load_toml
from .run.launch import generate as _generate, prepare
from .run.runner import RunResult
from .run.store_choice import choose_store, open_store as _open

__all__ = ["generate", "agenerate", "open_store", "load_config", "Store", "MissingExtra"]

log = logging.getLogger("synthledger")


def load_config(config: RunConfig | Mapping[str, Any] | str | Path, overrides: Iterable[str] = (),
                *, name: str | None = None) -> RunConfig:
    """A validated run config from a TOML file path, a dict shaped like the TOML, or a RunConfig.

    `overrides` are `section.key=value` strings (as `--set`; one string is one override); `name`
    renames the run (as `--name`)."""
    with python_terms():
        overrides = [overrides] if isinstance(overrides, str) else overrides  # (not its characters one by one)
        sets = [*overrides, *([f"run.name={_toml_string(name)}"] if name else [])]
        if isinstance(config, RunConfig):
            if not sets:
                return config
            return config_from_dict(apply_overrides(config.snapshot(), sets), base_dir=config.base_dir,
                                    source="the given config")
        if isinstance(config, Mapping):
            import copy

            return config_from_dict(apply_overrides(copy.deepcopy(dict(config)), sets), base_dir=str(Path.cwd()),
                                    source="the given config")
        if not isinstance(config, (str, Path)):
            raise ConfigError(f"config must be a path to a TOML file, a dict shaped like one or a RunConfig, "
                              f"not {type(config).__name__}")
        return _load_toml(Path(config), sets)


def _toml_string(s: str) -> str:
    import json

    return json.dumps(s)  # a JSON string is a valid TOML basic string


def _announce(line: str) -> None:
    (log.warning if line.startswith("warning:") else log.info)(line)


def generate(config: RunConfig | Mapping[str, Any] | str | Path, *, store: str | None = None,
             name: str | None = None, overrides: Iterable[str] = (), resume: bool = False,
             run: str | None = None, progress: bool = False) -> RunResult:
    """Run (or, with `resume`/`run`, continue) a generation to its end and return its RunResult.

    `store` is a SQLAlchemy URL (default: $SYNTHLEDGER_STORE, then the config's [run] store, then
    .synthledger/synthledger.db). `progress` shows the live view on stderr. Safe to call inside a
    running event loop (Jupyter): the run then happens on a worker thread and this call blocks."""
    with python_terms():
        cfg = load_config(config, overrides, name=name)
        result = _generate(cfg, store, resume=resume, run_id=run, show_progress=progress, announce=_announce)
    return result_in_python_terms(result)


async def agenerate(config: RunConfig | Mapping[str, Any] | str | Path, *, store: str | None = None,
                    name: str | None = None, overrides: Iterable[str] = (), resume: bool = False,
                    run: str | None = None, progress: bool = False) -> RunResult:
    """`generate` for async code: the run's queries go out on the caller's event loop.

    Preparing the run (loading seeds, opening the store) happens on a worker thread so the loop
    is not blocked; no signal handlers are installed (cancel the awaiting task to stop the run)."""
    import anyio

    with python_terms():
        cfg = load_config(config, overrides, name=name)
        runner = await anyio.to_thread.run_sync(
            lambda: prepare(cfg, store, resume=resume, run_id=run, show_progress=progress, announce=_announce))
        try:
            return result_in_python_terms(await runner.run())
        finally:
            runner.abandon_unstarted("the run could not be started")


class Store:
    """A read-only view of an event store: runs, their events, datasets, audits and summaries.

    Runs are named by id, unique id prefix or unique name, as on the command line."""

    def __init__(self, url: str | None = None) -> None:
        self.choice = choose_store(url)
        with python_terms():
            self._store: EventStore = _open(self.choice)
        self.url = self._store.url

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._store.close()

    def __repr__(self) -> str:
        return f"<synthledger.Store {self.choice.describe()}>"

    def runs(self, *, name: str | None = None, kind: str | None = None) -> list[RunInfo]:
        """Every run, oldest first (`kind`: generate, train or eval)."""
        return self._store.list_runs(name=name, kind=kind)

    def run(self, ref: str) -> RunInfo:
        return self._store.resolve(ref)

    def events(self, run: str, *, types: Iterable[str] | None = None, from_seq: int = 1) -> Iterator[dict[str, Any]]:
        """The run's events as dicts `{seq, type, v, ts, hash, payload}`, streamed in order; `types`
        (one name or several) keeps those types only."""
        names = [types] if isinstance(types, str) else list(types or [])
        _check_event_types(names)
        info = self._store.resolve(run)
        for ev in self._store.iter_events(info.id, from_seq, types=names or None):
            yield ev.as_dict()

    def rows(self, run: str, *, include_seeds: bool = False) -> list[dict[str, Any]]:
        """Accepted samples with their provenance, in the order they were accepted."""
        from .output.dataset import accepted_rows

        return list(accepted_rows(self._store, self._store.resolve(run).id, include_seeds=include_seeds))

    def dataset(self, run: str, *, include_seeds: bool = False, system: str | None = None) -> Any:
        """The accepted samples as a `datasets.Dataset`: `messages` (TRL's conversational column),
        question, answer and provenance, exactly as `export --format hf` writes them."""
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise MissingExtra("Store.dataset() needs the datasets package, which is not installed; "
                               "install it with: pip install 'synthledger[train]' (or pip install datasets)") from None
        from .output.export import hf_dataset

        return hf_dataset(self.rows(run, include_seeds=include_seeds), system)

    def audit(self, run: str) -> Any:
        """Replay the run and check its hash chain and budget invariants (`.ok`, `.violations`, ...)."""
        from .ledger.audit import audit_run

        return audit_run(self._store, self._store.resolve(run).id)

    def summary(self, run: str) -> dict[str, Any]:
        """What `show RUN --json` prints: status, spend, samples, rejections, diversity."""
        from .output.summary import summarize

        return summarize(self._store, self._store.resolve(run))


def _check_event_types(names: list[str]) -> None:
    """A misspelt type matches nothing, and an empty stream says nothing of why (`events --type` checks too)."""
    from .ledger.events import EVENT_TYPES
    from .run.config_errors import suggestion

    for t in names:
        if t not in EVENT_TYPES:
            raise ConfigError(f"{t!r} is not an event type{suggestion(t, EVENT_TYPES)}; the types: "
                              + ", ".join(sorted(EVENT_TYPES)))


def open_store(url: str | None = None) -> Store:
    """Open an existing store (default: $SYNTHLEDGER_STORE, else .synthledger/synthledger.db).
    A store that does not exist is an error: only a run creates one."""
    return Store(url)
