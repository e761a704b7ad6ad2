"""Command groups: `store` (whole stores) and `experiment` (the research's grid)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import StoreOpt, _announce, _existing_store, _handled, _store, _wide, app, err


store_app = typer.Typer(no_args_is_help=True, help="Work with whole stores: copy runs between them.")
app.add_typer(store_app, name="store")


@store_app.command("copy")
@_handled
def store_copy(
    src: str = typer.Argument(..., metavar="SRC_URL", help="Store to copy from (SQLAlchemy URL)."),
    dst: str = typer.Argument(..., metavar="DST_URL", help="Store to copy into (created if it is a new SQLite file)."),
    refs: list[str] = typer.Argument(None, metavar="RUN", help="Runs to copy (id or name); default: all."),
    unfinished: bool = typer.Option(False, "--unfinished", help="Copy the named generate runs even if they have not "
                                    "finished, to move one and resume it in one store only (resumed in both, it "
                                    "would pay for its remaining queries twice)."),
) -> None:
    """Copy runs between stores, verifying every hash chain; a run that differs is never overwritten.

    Example: python cli.py store copy sqlite:///.synthledger/synthledger.db postgresql://me@db/ledger"""
    from synthledger.store.copy import CopyRefused, copy_runs
    from synthledger.store.eventstore import EventStore

    source = _existing_store(src)
    for ref in refs or []:
        source.resolve(ref)  # a run that is not there fails before the target is made
    new_file = _new_sqlite_file(dst)
    target = EventStore(dst)
    failed = copied = 0
    for result in copy_runs(source, target, refs or [], unfinished=unfinished):
        if isinstance(result, CopyRefused):
            from rich.markup import escape

            err.print(f"[red]error:[/red] {escape(str(result))}", highlight=False, soft_wrap=True)
            failed += 1
        elif result.action == "identical":
            print(f"run {result.run_id} ({result.name}) is already in {target.where}, identical: nothing to do")
        else:
            copied += 1
            print(f"{result.action} run {result.run_id} ({result.name}): {result.events} events")
    target.close()
    if new_file is not None and not copied:  # nothing went in: leave no empty store behind
        for suffix in ("", "-wal", "-shm"):
            Path(f"{new_file}{suffix}").unlink(missing_ok=True)
    if failed:
        raise typer.Exit(1)


def _new_sqlite_file(url: str) -> Path | None:
    """The SQLite file `url` names, when it does not exist yet (a copy that copies nothing removes it)."""
    from synthledger.store.urls import normalize, sqlite_file

    path = sqlite_file(normalize(url))
    return None if path is None or Path(path).exists() else Path(path)


experiment_app = typer.Typer(no_args_is_help=True, help="The research's grid as one command: strategy x budget x "
                                                          "seed-set size -> generate -> train -> eval -> crossover.")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("run")
@_handled
def experiment_run(
    grid: Path = typer.Argument(..., metavar="GRID.toml", help="The experiment file (its \\[experiment] section)."),
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
    err.print(outcome.message, highlight=False, markup=False, soft_wrap=True)  # one line, as the engine wrote it
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
