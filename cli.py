"""The synthledger command line: a thin layer over the engine. `python cli.py --help`."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

if __package__ in (None, ""):  # `python cli.py ...` from a checkout: make the package importable
    _root = Path(__file__).resolve().parent
    try:
        import synthledger  # noqa: F401
    except ImportError:
        import importlib.util

        _spec = importlib.util.spec_from_file_location("synthledger", _root / "__init__.py",
                                                       submodule_search_locations=[str(_root)])
        _mod = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
        sys.modules["synthledger"] = _mod
        _spec.loader.exec_module(_mod)  # type: ignore[union-attr]

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Budget-exact synthetic fine-tuning data, with every teacher query on an event ledger.")
out = Console()
err = Console(stderr=True)

StoreOpt = typer.Option(None, "--store", help="SQLAlchemy URL of the event store (default: $SYNTHLEDGER_STORE, "
                                              "else .synthledger/synthledger.db)")


class CliError(Exception):
    """An error already phrased for the user."""


def _handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the engine's input errors into one clear line and a non-zero exit, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from synthledger.engine.config import ConfigError
        from synthledger.engine.plugins import PluginError
        from synthledger.engine.runner import ResumeRefused
        from synthledger.engine.strategy import SeedError
        from synthledger.store.eventstore import StoreError

        known: tuple[type[BaseException], ...] = (CliError, ConfigError, PluginError, ResumeRefused, SeedError,
                                                  StoreError, FileNotFoundError)
        try:
            from synthledger.plugins.teachers.settings import MissingApiKey

            known += (MissingApiKey,)
        except ImportError:
            pass
        try:
            return fn(*args, **kwargs)
        except known as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _store(url: Optional[str]):
    from synthledger.store.eventstore import EventStore

    return EventStore(url)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@app.command()
@_handled
def generate(
    config: Path = typer.Option(..., "--config", "-c", help="Run config (TOML)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the latest unfinished run of this config."),
    run: Optional[str] = typer.Option(None, "--run", help="Resume this run (id or name)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable)."),
    store: Optional[str] = StoreOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Query the teacher under the config's budget and record everything as events."""
    from synthledger.engine.config import load_config
    from synthledger.engine.runner import generate as run_generate

    cfg = load_config(config, set_)
    result = run_generate(cfg, store, resume=resume, run_id=run, show_progress=progress)
    spent = result.snapshot.get("spent", {})
    err.print(f"{result.message}")
    print(f"run {result.run_id} {result.status} (queries {spent.get('queries')}, "
          f"tokens {spent.get('input_tokens')}/{spent.get('output_tokens')}, ${spent.get('usd', 0):.4f})")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@_handled
def runs(store: Optional[str] = StoreOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """List runs."""
    infos = _store(store).list_runs()
    if as_json:
        print(json.dumps([{"id": r.id, "name": r.name, "kind": r.kind, "status": r.status,
                           "created": _when(r.created), "events": r.last_seq, "parent_id": r.parent_id}
                          for r in infos]))
        return
    table = Table("id", "name", "kind", "status", "created", "events")
    for r in infos:
        table.add_row(r.id, r.name, r.kind, r.status, _when(r.created), str(r.last_seq))
    out.print(table)


def _fmt_amount(d: dict[str, Any]) -> str:
    return f"{d['queries']} q, {d['input_tokens']}/{d['output_tokens']} tok, ${d['usd']:.4f}"


@app.command()
@_handled
def show(ref: str = typer.Argument(..., metavar="RUN"), store: Optional[str] = StoreOpt,
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Summarise a run: status, spend, samples, rejections and data statistics."""
    from synthledger.engine.summary import summarize

    st = _store(store)
    info = st.resolve(ref)
    summary = summarize(st, info)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    out.print(f"[bold]{info.name}[/bold] ({info.id}) kind={info.kind} status={info.status} "
              f"events={info.last_seq} created={_when(info.created)}")
    for k, v in summary.items():
        if k in ("id", "name", "status", "kind"):
            continue
        if isinstance(v, dict):
            out.print(f"[bold]{k}[/bold]")
            for kk, vv in v.items():
                out.print(f"  {kk}: {_fmt_amount(vv) if isinstance(vv, dict) and 'queries' in vv else vv}")
        else:
            out.print(f"[bold]{k}[/bold]: {v}")


@app.command()
@_handled
def events(ref: str = typer.Argument(..., metavar="RUN"), store: Optional[str] = StoreOpt,
           from_seq: int = typer.Option(1, "--from"), type_: list[str] = typer.Option([], "--type"),
           limit: Optional[int] = typer.Option(None, "--limit")) -> None:
    """Dump a run's events as JSON lines."""
    st = _store(store)
    info = st.resolve(ref)
    for i, ev in enumerate(st.iter_events(info.id, from_seq, types=type_ or None)):
        if limit is not None and i >= limit:
            break
        sys.stdout.write(json.dumps(ev.as_dict()) + "\n")


@app.command()
@_handled
def audit(ref: str = typer.Argument(..., metavar="RUN"), store: Optional[str] = StoreOpt,
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Replay a run, verify its hash chain and budget invariants; non-zero exit on any violation."""
    from synthledger.engine.audit import audit_run

    st = _store(store)
    info = st.resolve(ref)
    report = audit_run(st, info.id)
    if as_json:
        print(json.dumps(report.as_json()))
    else:
        table = Table("scope", "queries", "input tokens", "output tokens", "usd")
        table.add_row("spent", *map(str, report.spent.values()))
        table.add_row("budget", *[("-" if v is None else str(v)) for v in report.budget.values()])
        for role, amt in report.by_role.items():
            table.add_row(f"role {role}", *map(str, amt.values()))
        for strat, amt in report.by_strategy.items():
            table.add_row(f"strategy {strat}", *map(str, amt.values()))
        for model, amt in report.by_model.items():
            table.add_row(f"model {model}", *map(str, amt.values()))
        out.print(table)
        out.print(f"events {report.events}, status {report.status}, counts {report.counts}")
        if report.ok:
            out.print("[green]audit ok[/green]: hash chain, sequence and budget invariants hold")
        else:
            for v in report.violations[:20]:
                err.print(f"[red]seq {v.seq}[/red]: {v.message}", highlight=False)
            err.print(f"[red]audit failed[/red]: first bad sequence number {report.violations[0].seq}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@_handled
def export(ref: str = typer.Argument(..., metavar="RUN"), fmt: str = typer.Option("chat", "--format"),
           out_path: Path = typer.Option(..., "--out"), include_seeds: bool = typer.Option(False, "--include-seeds"),
           store: Optional[str] = StoreOpt) -> None:
    """Write the run's accepted samples (with provenance) as jsonl, chat jsonl or a datasets folder."""
    from synthledger.engine.dataset import accepted_rows
    from synthledger.engine.export_formats import write_rows

    if fmt not in ("jsonl", "chat", "hf"):
        raise CliError(f"--format must be jsonl, chat or hf (got {fmt!r})")
    st = _store(store)
    info = st.resolve(ref)
    n = write_rows(accepted_rows(st, info.id, include_seeds=include_seeds), fmt, out_path)
    print(f"wrote {n} rows to {out_path}")


@app.command()
@_handled
def plugins(as_json: bool = typer.Option(False, "--json")) -> None:
    """List every plugin with its kind, name, distribution and version."""
    from synthledger.engine.plugins import get_host

    regs = get_host().registrations()
    if as_json:
        print(json.dumps([{"kind": r.kind, "name": r.name, "plugin": r.plugin, "distribution": r.distribution,
                           "version": r.version} for r in regs]))
        return
    table = Table("kind", "name", "plugin", "distribution", "version")
    for r in regs:
        table.add_row(r.kind, r.name, r.plugin, r.distribution, r.version)
    out.print(table)


@app.command()
@_handled
def recommend(seeds: int = typer.Option(..., "--seeds", min=1), budget: int = typer.Option(..., "--budget", min=1),
              augmenter: str = typer.Option("strong", "--augmenter"),
              verifiable: Optional[str] = typer.Option(None, "--verifiable"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Recommend a strategy (or mix) for a seed-set size and a query budget, with reasons."""
    from synthledger.engine.recommend import recommend as rec

    if augmenter not in ("weak", "strong"):
        raise CliError("--augmenter must be weak or strong")
    if verifiable not in (None, "yes", "no"):
        raise CliError("--verifiable must be yes or no")
    r = rec(seeds, budget, augmenter=augmenter, verifiable=None if verifiable is None else verifiable == "yes")
    if as_json:
        from dataclasses import asdict

        print(json.dumps(asdict(r), default=str))
        return
    out.print(r.render() if hasattr(r, "render") else str(r))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
