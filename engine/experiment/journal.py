"""The experiment's own run, written by the one journal (ledger/journal.py): holding the run's
lease, durable at every event.

A rerun of the same grid reopens the run (its lease is free once the last process died) instead
of starting another, so cells finished before a kill are found again and never counted twice.
"""

from __future__ import annotations

import os

from ... import __version__
from ...store.eventstore import EventStore, RunInfo, owner_token
from ..errors import ConfigError
from ..ledger.events import ExperimentGrid, RunResumed, RunStarted
from ..ledger.journal import Journal
from .config import Experiment


def create(store: EventStore, exp: Experiment, grid: ExperimentGrid) -> Journal:
    """The run row, its `run_started` and the grid in one transaction: an experiment exists whole
    or not at all."""
    snapshot = exp.snapshot()
    started = RunStarted(config=snapshot, config_hash=exp.grid_hash(), plan_hash=exp.grid_hash(),
                         version=__version__, kind="experiment", config_dir=str(exp.path.resolve().parent))
    return Journal.start(store, exp.name, snapshot, exp.grid_hash(), [started, grid], kind="experiment",
                         owner=owner_token(), durable_each=True)


def reopen(store: EventStore, info: RunInfo) -> Journal:
    """Take the experiment's run back (its lease is free once the last process died)."""
    owner = owner_token()
    store.acquire(info.id, owner)
    fresh = store.get_run(info.id)
    journal = Journal(store, info.id, fresh.last_seq, fresh.head_hash, owner, durable_each=True)
    journal.emit(RunResumed(pid=os.getpid(), config_hash=info.config_hash))
    return journal


def existing(store: EventStore, exp: Experiment) -> RunInfo | None:
    """The experiment run of this name in the store, refusing one that ran a different grid."""
    runs = store.list_runs(name=exp.name, kind="experiment")
    if not runs:
        return None
    info = runs[-1]
    if info.config_hash != exp.grid_hash():
        raise ConfigError(f"experiment {exp.name!r} already exists in {store.url} ({info.id}) with a different "
                          "grid, base or train config; give this one another [experiment] name, or restore the "
                          "files it ran with to resume it")
    return info
