"""Commands around the data: advice before a run, training and evaluating students, the offline demo."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.table import Table

from .common import CliError, StoreOpt, _announce, _handled, _store, app, err, out

# The largest whole number a config (and so a recommended one) may hold (engine/run/configfile.MAX_INT):
# a recommendation `generate` would refuse is no recommendation, and a larger one overflowed a float.
MAX_COUNT = 2**63 - 1


@app.command()
@_handled
def recommend(seeds: int = typer.Option(..., "--seeds", min=1, max=MAX_COUNT, metavar="N", help="Seed-set size |S|."),
              budget: int = typer.Option(..., "--budget", min=1, max=MAX_COUNT, metavar="Q", help="Query budget Q."),
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


def _quiet_libraries() -> None:
    """--no-progress quiets the bars transformers and the Hub draw too ("Loading weights ...")."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # (without the train extra nothing here loads weights)
        return
    hf_logging.disable_progress_bar()


def _warn_if_unfinished(info) -> None:  # noqa: ANN001 - a store's RunInfo
    """A run still going (or stopped short) holds only part of its data: training on it is allowed,
    but said, before the wait, as `export` says it of the file it writes."""
    from rich.markup import escape

    from synthledger.store.records import FINISHED

    if info.kind == "generate" and info.status not in FINISHED:
        err.print(f"warning: run {info.id} ({escape(info.name)}) is {info.status}: training on the rows it had "
                  "accepted so far", highlight=False, soft_wrap=True)


@contextmanager
def _reported_interrupt() -> Iterator[None]:
    """Ctrl-C during training or evaluation: one line saying what became of the run, exit 130."""
    from synthledger.engine.student.runs import Interrupted

    try:
        yield
    except Interrupted as exc:
        err.print(f"interrupted: {exc.kind} run {exc.run_id} is recorded as interrupted; "
                  f"{exc.kind} again to replace it", highlight=False, soft_wrap=True)
        raise SystemExit(130) from None  # (not typer.Exit(130): that is how Typer returns a Ctrl-C it caught, unsaid)


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
    from synthledger.engine.student.runs import (check_eval, eval_run, load_train_config, train_run,
                                                 training_questions)

    cfg = load_train_config(config, [*set_, *(["trainer.merge=true"] if merge else [])])
    if not progress:
        _quiet_libraries()
    from_file = Path(source).suffix in (".jsonl", ".json") and Path(source).exists()
    if Path(source).suffix in (".jsonl", ".json") and not from_file:  # a typo in a path, not a run name
        raise CliError(f"dataset file {source} does not exist")
    if from_file and cfg.eval is not None:  # [eval] is checked before the wait, not after it
        check_eval(cfg.eval)
    st = _store(store, create=from_file)  # training from a run needs the run's store to exist
    if not from_file:
        info = st.resolve(source)
        _warn_if_unfinished(info)
        if cfg.eval is not None:
            check_eval(cfg.eval, training_questions(st, info.id))
    with _reported_interrupt():
        result = train_run(source, cfg, st, progress=progress)
    print(f"trained: final loss {result.get('final_loss', float('nan')):.4g}, {result.get('steps')} steps, "
          f"{result.get('tokens_per_s', 0):.0f} tokens/s; adapter in {result['out_dir']}")
    if cfg.eval is not None:
        e = cfg.eval
        with _reported_interrupt():
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

    if not progress:
        _quiet_libraries()
    with _reported_interrupt():
        result = eval_run(model, on, _store(store, create=True), limit=limit, task_name=task,
                          exclude_run=exclude_run, out_path=out_path,
                          options={"batch_size": batch_size, "max_new_tokens": max_new_tokens}, progress=progress)
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
