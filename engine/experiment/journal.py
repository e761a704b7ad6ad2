"""The experiment's own run: one writer, holding the run's lease, durable at every event.

A rerun of the same grid reopens the run (its lease is free once the last process died) instead
of starting another, so cells finished before a kill are found again and never counted twice.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from ... import __version__
from ...store.eventstore import EventStore, NewEvent, RunInfo, owner_token
from ..errors import ConfigError
from ..ledger.events import SCHEMA_VERSION, ExperimentGrid, RunFinished, RunResumed, RunStarted, to_payload
from .config import Experiment


class Journal:
    def __init__(self, store: EventStore, run_id: str, owner: str) -> None:
        self.store = store
        self.run_id = run_id
        self.owner = owner
        info = store.get_run(run_id)
        self.seq, self.head = info.last_seq, info.head_hash

    @classmethod
    def create(cls, store: EventStore, exp: Experiment, grid: ExperimentGrid) -> "Journal":
        """The run row, its `run_started` and the grid in one transaction: an experiment exists whole
        or not at all."""
        owner = owner_token()
        snapshot = exp.snapshot()
        started = RunStarted(config=snapshot, config_hash=exp.grid_hash(), plan_hash=exp.grid_hash(),
                             version=__version__, kind="experiment", config_dir=str(exp.path.resolve().parent))
        first = [NewEvent(*to_payload(ev), SCHEMA_VERSION) for ev in (started, grid)]
        run_id, _, _ = store.start_run(exp.name, snapshot, exp.grid_hash(), first, kind="experiment", owner=owner)
        return cls(store, run_id, owner)

    @classmethod
    def reopen(cls, store: EventStore, info: RunInfo) -> "Journal":
        owner = owner_token()
        store.acquire(info.id, owner)
        journal = cls(store, info.id, owner)
        journal.emit(RunResumed(pid=os.getpid(), config_hash=info.config_hash))
        return journal

    def emit(self, event: BaseModel) -> None:
        type_, payload = to_payload(event)
        self.seq, self.head = self.store.append(self.run_id, [NewEvent(type_, payload, SCHEMA_VERSION)],
                                                self.seq, self.head, owner=self.owner)

    def finish(self, status: str, message: str = "") -> None:
        self.emit(RunFinished(status=status, message=message))  # type: ignore[arg-type]
        self.store.release(self.run_id, self.owner, status)

    def release(self) -> None:
        self.store.release(self.run_id, self.owner)


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
