"""Commands on runs: start or resume one, list, show, dump, audit and export them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from synthledger.engine.output.export import FORMATS as EXPORT_FORMATS  # stdlib-only: no startup cost

from .common import CliError, StoreOpt, _announce, _handled, _store, _when, app, err, out


@app.command()
@_handled
def generate(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config (TOML). Optional with "
                                                                      "--resume/--run: the run's recorded config is used."),
    resume: bool = typer.Option(False, "--resume", help="Continue the latest unfinished run of this config, or "
                                                        "start it if the store holds no start of it (the store must exist; without --config: "
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
    from synthledger.engine.run.config import ConfigError, load_config, with_origin
    from synthledger.engine.run.launch import generate as run_generate, recorded_config

    named = [f"run.name={json.dumps(name)}"] if name is not None else []  # (--name "" is refused, not ignored)
    if config is not None:
        cfg = load_config(config, [*set_, *named], given_by={"run.name": "--name"} if named else None)
        try:
            result = run_generate(cfg, store, resume=resume, run_id=run, show_progress=progress, announce=_announce)
        except ConfigError as exc:  # a plugin's options, checked as its parts are made
            raise ConfigError(with_origin(str(exc), set_)) from None
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
           from_seq: int = typer.Option(1, "--from", metavar="SEQ", min=1, help="Start at this sequence number."),
           type_: list[str] = typer.Option([], "--type", metavar="TYPE",
                                           help="Only events of this type, e.g. query_settled (repeatable)."),
           limit: Optional[int] = typer.Option(None, "--limit", metavar="N", min=0, help="Stop after N events.")) -> None:
    """Dump a run's events as JSON lines {seq, type, v, ts, hash, payload}.

    Example: synthledger events gsm-aa --type query_settled --limit 5
    """
    from synthledger.engine.ledger.events import EVENT_TYPES
    from synthledger.engine.run.config_errors import suggestion

    for t in type_:  # a misspelt type would match nothing, silently
        if t not in EVENT_TYPES:
            raise CliError(f"--type {t!r} is not an event type{suggestion(t, EVENT_TYPES)}; the types: "
                           + ", ".join(sorted(EVENT_TYPES)))
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
        out.print(f"events {report.events}, status {report.status}; queries: {counts}", highlight=False,
                  soft_wrap=True)
        for line in report.sharing_lines():
            out.print(escape(line), highlight=False, soft_wrap=True)
        for f in report.provider_faults:
            out.print(f"[yellow]provider fault[/yellow] at seq {f.seq}: {escape(f.message)}", highlight=False,
                      soft_wrap=True)
        if report.ok:
            out.print("[green]audit ok[/green]: hash chain, sequence and budget invariants hold")
        else:
            for v in report.violations[:20]:
                # One line each, as every error is (piped, rich cut them at 80 columns); escaped:
                # a message quoting a payload may hold what rich reads as markup.
                err.print(f"[red]seq {v.seq}[/red]: {escape(v.message)}", highlight=False, soft_wrap=True)
            err.print(f"[red]audit failed[/red]: first bad sequence number {report.violations[0].seq}", soft_wrap=True)
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
    seed_rows = sum(r.get("strategy") == "seed" for r in rows)
    card = None
    if fmt == "hf":
        from synthledger.engine.output.dataset_card import dataset_card

        card = dataset_card(st, info, len(rows), licence=licence, seed_rows=seed_rows)
    n = write_rows(rows, fmt, out_path, system=system, card=card)
    print(f"wrote {n} rows to {out_path}")
    from rich.markup import escape

    from synthledger.store.records import FINISHED

    if info.status not in FINISHED:  # easy to miss in a file that looks finished
        err.print(f"warning: run {info.id} ({escape(info.name)}) is {info.status}: these are the rows it had accepted "
                  "so far" + ("; it has none" if not n else ""), highlight=False, soft_wrap=True)
    elif not n:
        err.print(f"warning: run {info.id} ({escape(info.name)}) has no accepted samples: the file is empty",
                  highlight=False, soft_wrap=True)
    if push_to_hub:
        from synthledger.engine.output.dataset_card import dataset_card
        from synthledger.engine.output.export import hf_dataset
        from synthledger.engine.output.hub import push_dataset

        url = push_dataset(hf_dataset(rows, system), push_to_hub,
                           dataset_card(st, info, len(rows), licence=licence, data_files=True, seed_rows=seed_rows),
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
