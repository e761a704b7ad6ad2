"""`experiment run`: the grid as one resumable command.

Generation cells run one at a time in this process (they share a provider's rate limit, and the
answers one cell settles are what the next, larger cell reuses); each cell's train + eval job goes
to the executor as soon as its data exists, so training overlaps the remaining generation. Every
step is an event of the experiment run first, which is what makes a rerun after `kill -9` skip
what finished, resume an interrupted generation and restart an interrupted training.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...store.eventstore import EventStore, RunInfo
from ...store.records import FINISHED
from ..errors import ConfigError
from ..ledger.events import (CellFailed, CellFinished, CellGenerated, CellStarted, ExperimentGrid,
                             ExperimentResult)
from ..ledger.ledger import Amount
from ..student.ctrl_c import CtrlC, guarded_ctrl_c
from .cells import Cell, generation_config, predictions_path, train_dict
from .claim import check_claim, check_store, stake_claim
from .config import Experiment
from ..ledger.journal import Journal
from .journal import create, existing, reopen
from .prepare import Prepared, heldout_path, prepare
from .results import build_result, load_state
from .seeds import subset_path, write_subset
from .stages import Generated, run_generation
from .view import GridView


# How often a driver waiting for its jobs looks for a Ctrl-C that a finalizer swallowed.
CTRL_C_CHECK_S = 0.5


def wait_for_one(futures: list[Future], ctrl_c: CtrlC) -> set[Future]:
    """The futures done once one is: the driver waits here for most of an experiment, so it also
    raises a Ctrl-C that landed in a finalizer (and was lost there) instead of waiting on for the
    jobs as if nothing had been pressed."""
    while True:
        done, _ = wait(futures, timeout=CTRL_C_CHECK_S, return_when=FIRST_COMPLETED)
        if done:
            return done
        ctrl_c.check()


@dataclass
class Outcome:
    run_id: str
    status: str
    message: str
    result: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "completed"


def absolute_url(url: str) -> str:
    """A SQLite URL with an absolute path, so worker processes (whatever their directory) open the
    same file."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path, _, query = url[len("sqlite:///"):].partition("?")
        if path and path != ":memory:":
            return f"sqlite:///{Path(path).resolve()}" + (f"?{query}" if query else "")
    return url


def store_for(exp: Experiment, explicit: str | None) -> tuple[str, str]:
    """(absolute URL, one line saying which store and why): the flag, then $SYNTHLEDGER_STORE, then
    the base run config's [run] store, then the default, as for `generate`."""
    from ..run.store_choice import choose_store

    choice = choose_store(explicit, (exp.base.get("run") or {}).get("store"), "the base run config")
    return absolute_url(choice.url), choice.describe()


def _write_inputs(prep: Prepared) -> None:
    """The seed subsets and held-out examples the cells read; the same bytes on every rerun."""
    for (r, size), seeds in prep.subsets.items():
        write_subset(subset_path(prep.exp.workdir, r, size), seeds)
    path = heldout_path(prep.exp)
    text = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in prep.heldout)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def grid_event(prep: Prepared) -> ExperimentGrid:
    ev = prep.exp.section.eval
    return ExperimentGrid(grid_hash=prep.exp.grid_hash(), cells=[c.as_dict() for c in prep.cells],
                          heldout={"spec": ev.heldout, "limit": ev.limit, "n": len(prep.heldout), "task": prep.exp.task},
                          inputs=prep.digests())


class Driver:
    def __init__(self, prep: Prepared, store: EventStore, store_url: str, journal: Journal, executor: Any,
                 view: GridView, ctrl_c: CtrlC | None = None) -> None:
        self.ctrl_c = ctrl_c or CtrlC()
        self.prep, self.exp = prep, prep.exp
        self.store, self.store_url = store, store_url
        self.journal, self.executor, self.view = journal, executor, view
        self.pending: dict[Future, Cell] = {}
        self.gen_runs: dict[str, str] = {}
        self.stop_reason: str | None = None
        self.interrupted = False

    def job(self, cell: Cell, generate_run: str | None) -> dict[str, Any]:
        ev, settings = self.exp.section.eval, self.exp.section.executor
        options = {"batch_size": ev.batch_size, "max_new_tokens": ev.max_new_tokens, "on_overlap": "drop",
                   "include_instruction": ev.include_instruction, "system_prompt": ev.system_prompt}
        return {"cell": cell.id, "store": self.store_url, "generate_run": generate_run,
                "train": train_dict(self.exp, cell) if generate_run else None, "student": self.prep.student,
                "heldout_path": str(heldout_path(self.exp)), "predictions": str(predictions_path(self.exp, cell)),
                "task": self.exp.task, "eval": {"evaluator": ev.evaluator, "options": options},
                "num_cpus": settings.num_cpus}

    def submit(self, cell: Cell, generate_run: str | None) -> None:
        self.journal.emit(CellStarted(cell=cell.id, stage="train_eval", run_id=generate_run))
        self.pending[self.executor.submit(self.job(cell, generate_run))] = cell
        self.view.training(cell.id)

    def harvest(self, block: bool) -> None:
        if not self.pending:
            return
        pending = list(self.pending)
        done = wait_for_one(pending, self.ctrl_c) if block else wait(pending, 0, FIRST_COMPLETED)[0]
        for fut in done:
            cell = self.pending.pop(fut)
            try:
                r = fut.result()
            except Exception as exc:  # the job's own error, phrased for the table
                reason = one_line_reason(f"{type(exc).__name__}: {exc}")
                self.journal.emit(CellFailed(cell=cell.id, stage="train_eval", reason=reason))
                self.view.failed_cell(cell.id, reason)
                continue
            accuracy = r["correct"] / r["n"] if r["n"] else 0.0
            self.journal.emit(CellFinished(cell=cell.id, generate_run=self._gen_run(cell), train_run=r["train_run"],
                                           eval_run=r["eval_run"], accuracy=accuracy, n=r["n"], correct=r["correct"],
                                           outcomes=r["outcomes"], rows=r["rows"], wall_s=r["wall_s"]))
            self.view.finished(cell.id, accuracy)

    def _gen_run(self, cell: Cell) -> str | None:
        return self.gen_runs.get(cell.id)

    def generate(self, cell: Cell, run_id: str | None) -> Generated:
        cfg = generation_config(self.exp, cell)

        def started(new_id: str, runner: Any) -> None:
            if new_id != run_id:
                self.journal.emit(CellStarted(cell=cell.id, stage="generate", run_id=new_id))
            if runner is not None:
                self.view.generating(cell.id, runner, cell.budget or 0)

        gen = run_generation(cfg, self.store, run_id, started)
        self.journal.emit(CellGenerated(cell=cell.id, generate_run=gen.run_id, status=gen.status, rows=gen.rows,
                                        paid=gen.paid, reused=gen.reused, wall_s=gen.wall_s,
                                        quality=gen.quality, lost=gen.lost))
        self.view.generated(cell.id, Amount.of(gen.paid), Amount.of(gen.reused), gen.status)
        return gen

    def run(self) -> None:
        state = load_state(self.store, self.journal.run_id)
        self.gen_runs = {cid: rec.generate_run for cid, rec in state.cells.items() if rec.generate_run}
        for cell in self.prep.cells:
            self.ctrl_c.check()
            rec = state.cells[cell.id]
            if rec.status == "finished":
                self.view.skipped(cell.id)
                continue
            if not cell.generates:
                self.submit(cell, None)
                continue
            if self.stop_reason is not None:
                continue
            if rec.generated is not None and rec.generated.get("status") in FINISHED:
                self.submit(cell, rec.generate_run)
                continue
            gen = self.generate(cell, rec.generate_run)
            self.gen_runs[cell.id] = gen.run_id
            if gen.status == "interrupted":  # not a failure: the same command again resumes it
                self.stop_reason, self.interrupted = f"the generation of {cell.id} was interrupted", True
                return
            if not gen.ok:
                self.journal.emit(CellFailed(cell=cell.id, stage="generate",
                                             reason=one_line_reason(f"{gen.status}: {gen.message}")))
                self.view.failed_cell(cell.id, gen.message)
                self.stop_reason = f"generation of {cell.id} {gen.status}: {gen.message}"
                continue
            self.submit(cell, gen.run_id)
            self.harvest(block=False)
        while self.pending:
            self.harvest(block=True)


def _start(prep: Prepared, store: EventStore, info: RunInfo | None) -> tuple[Journal | None, Any]:
    """Open the experiment's run: create it (`info` None), reopen it to resume, or (nothing left
    to do) None. Either way its workdir is claimed before any cell runs."""
    exp = prep.exp
    if info is None:
        journal = create(store, exp, grid_event(prep))
        stake_claim(exp, store, journal.run_id)
        return journal, None
    stake_claim(exp, store, info.id)  # (one created before a kill, or before claims, had none yet)
    state = load_state(store, info.id)
    changed = [what for what, digest in prep.digests().items() if state.inputs.get(what, digest) != digest]
    if changed:  # (QA: a held-out file cut to 20 rows scored half the cells on 30 examples, half on 20)
        names = " and ".join({"seeds": "seed examples", "heldout": "held-out examples"}[w] for w in changed)
        raise ConfigError(f"{exp.path}: the {names} of experiment {exp.name!r} changed since it started; restore "
                          "them to resume it, or give this grid another [experiment] name")
    if info.status == "completed" and all(r.status == "finished" for r in state.cells.values()):
        return None, state
    return reopen(store, info), None


def _this_experiment(exp: Experiment, store: EventStore, resume: bool) -> RunInfo | None:
    """The experiment's run in the store (None: a new one), once its workdir is known to be free
    for it: before a file is written or a query paid."""
    info = existing(store, exp)
    if info is None and resume:
        raise ConfigError(f"no experiment named {exp.name!r} in {store.url} to resume; run without --resume")
    check_claim(exp, store, info.id if info is not None else None)
    return info


def run_experiment(exp: Experiment, store_url: str | None = None, *, executor: str = "local", resume: bool = False,
                   progress: bool = True, announce: Any = None) -> Outcome:
    """Run (or continue) the grid to its end; bad input fails before the first event."""
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor must be local or ray, got {executor!r}")
    prep = prepare(exp)
    url, where = store_for(exp, store_url)
    if announce is not None:
        announce(where)
    check_store(exp, url)  # (another store's experiment owns the workdir: refused before that store is made)
    store = EventStore(url, must_exist=resume)  # (a resume of a store that is not there is a typo, not a new store)
    info = _this_experiment(exp, store, resume)
    _write_inputs(prep)  # deterministic files; written before the run so a failure here leaves no run behind
    journal, done_state = _start(prep, store, info)
    if journal is None:
        return Outcome(done_state.info.id, "completed", "every cell had finished already", build_result(done_state))
    view = GridView(exp.name, [c.id for c in prep.cells], enabled=progress)
    with guarded_ctrl_c() as ctrl_c:
        return _drive(prep, store, url, journal, view, executor, ctrl_c)


def _drive(prep: Prepared, store: EventStore, url: str, journal: Journal, view: GridView, executor: str,
           ctrl_c: CtrlC) -> Outcome:
    """The grid driven to its end or its stop, and the experiment run closed either way."""
    pool = None
    status, message = "failed", "stopped"
    previous = _stop_on_sigterm(ctrl_c)
    started = time.time()
    try:
        pool = make_executor(executor, prep.exp.section.executor)
        driver = Driver(prep, store, url, journal, pool, view, ctrl_c)
        with view:
            driver.run()
        status, message = _verdict(store, journal.run_id, driver)
        if status == "completed":
            journal.emit(ExperimentResult(result=build_result(load_state(store, journal.run_id))))
    except KeyboardInterrupt:
        status, message = "interrupted", "stopped by the user; run the same command again to continue"
    finally:
        signal.signal(signal.SIGTERM, previous)
        if pool is not None:
            pool.shutdown(cancel=status != "completed")
            if status != "completed":
                _close_stopped_cells(store, started, getattr(pool, "killed", False))
        journal.finish(status, message)
    return Outcome(journal.run_id, status, message, build_result(load_state(store, journal.run_id)))


# How long the sweep after a stop waits for killed workers' processes to be gone (see below).
KILLED_GONE_S = 10.0


def _close_stopped_cells(store: EventStore, since: float, killed: bool) -> None:
    """The training and evaluation runs of the workers just stopped, closed as `interrupted` now:
    they are never resumed (a rerun redoes the cell), and left `running` they read so until some
    later `train` or `eval` happened to sweep them. A run is closed once its process is gone; a Ray
    worker killed after ignoring its cancel can outlive its task's end by a moment, so when the
    executor `killed` any, the sweep waits (at most KILLED_GONE_S) for the processes of this host
    that hold this experiment's runs (created `since` it started) to be gone."""
    from ..student.runs import close_orphans

    close_orphans(store, wait_s=KILLED_GONE_S if killed else 0.0, since=since)


def make_executor(kind: str, settings: Any) -> Any:
    """The executor named on the command line, with the grid's resource settings."""
    if kind == "ray":
        from .executor_ray import RayExecutor

        return RayExecutor(settings.parallel, settings.num_cpus, settings.num_gpus, settings.address)
    from .executor_local import LocalExecutor

    return LocalExecutor(settings.parallel, settings.num_cpus, settings.num_gpus)


def _stop_on_sigterm(ctrl_c: CtrlC) -> Any:
    """SIGTERM stops the experiment as Ctrl-C does: recorded as interrupted, workers stopped, and not
    lost in a finalizer either. (During a generation the runner's own handler takes over and stops
    that run cleanly first.)"""
    return signal.signal(signal.SIGTERM, ctrl_c.on_signal)


def _verdict(store: EventStore, run_id: str, driver: Driver) -> tuple[str, str]:
    if driver.interrupted:
        return "interrupted", f"{driver.stop_reason}; run the same command again to continue"
    state = load_state(store, run_id)
    failed = [cid for cid, rec in state.cells.items() if rec.status != "finished"]
    if not failed:
        return "completed", f"{len(state.cells)} cells finished"
    first = state.cells[failed[0]]
    why = one_line_reason((first.failed or {}).get("reason") or driver.stop_reason or "not run")
    return "failed", f"{len(failed)} of {len(state.cells)} cells did not finish (first: {failed[0]}: {why})"


# A cell's failure reason is recorded and printed whole up to this length (a traceback-sized one is cut).
REASON_CHARS = 2000


def one_line_reason(text: str, limit: int = REASON_CHARS) -> str:
    """A failure's reason as the one line the summary prints: whitespace (a library's wrapped
    message, a list on several lines) collapsed, and only a very long one shortened, at the end of
    a sentence where there is one (a reason cut mid-sentence reads as a different reason)."""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    head = line[:limit]
    end, space = head.rfind(". "), head.rfind(" ")
    head = head[:end + 1] if end > limit // 2 else head[:space] if space > 0 else head
    return f"{head} (... {len(line) - len(head)} more characters)"
