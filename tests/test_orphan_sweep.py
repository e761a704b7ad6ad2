"""Training and evaluation runs whose process died are closed as `interrupted` by a sweep that an
experiment's driver and each of its jobs run at once. Two sweeps must never take a run from each other:
the one that took it closes it, the other leaves it (a second sweep once took the run mid-close and the
first sweep's cell failed: "held by another process (nobody)")."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from synthledger.engine.ledger.events import RunStarted
from synthledger.engine.ledger.journal import Journal
from synthledger.engine.student.runs import ORPHAN_MESSAGE, close_orphans
from synthledger.store.eventstore import EventStore
from synthledger.store.records import owner_token


def _dead_owner() -> str:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{socket.gethostname()}:{int(proc.stdout)}:deadbeef"


def _orphans(store: EventStore, n: int) -> list[str]:
    dead = _dead_owner()
    ids = []
    for i in range(n):
        started = RunStarted(config={}, config_hash="c", plan_hash="", version="test", kind="train", budget={})
        journal = Journal.start(store, f"train-{i}", {}, "c", [started], kind="train", owner=dead, durable_each=True)
        ids.append(journal.run_id)
    return ids


def test_a_run_is_taken_only_from_the_dead_holder_seen(store_url):
    store = EventStore(store_url)
    [run] = _orphans(store, 1)
    dead = store.get_run(run).owner
    first, second = owner_token(), owner_token()
    assert store.take_from(run, first, dead)
    assert not store.take_from(run, second, dead)  # a second sweep that saw the same dead holder
    assert store.get_run(run).owner == first


def test_sweeps_at_once_close_each_orphan_once(store_url):
    url = store_url
    runs = _orphans(EventStore(url), 24)
    closed: list[list[str]] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            closed.append(close_orphans(EventStore(url)))
        except BaseException as exc:  # noqa: BLE001 (reported below, with the others)
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r for found in closed for r in found) == sorted(runs)  # each by exactly one sweep
    store = EventStore(url)
    for run in runs:
        info = store.get_run(run)
        assert (info.status, info.owner) == ("interrupted", None)
        [ended] = [e.payload for e in store.iter_events(run, types=["run_finished"])]
        assert ended["message"] == ORPHAN_MESSAGE


def test_a_pool_worker_whose_driver_died_before_it_started_exits_at_once():
    # The kernel's parent-death signal is asked for in the worker's initializer; a driver killed
    # before that (QA: a kill in the experiment's first commits) left two workers training on for a
    # minute with nobody to report to. The worker now checks that its parent is still its driver.
    code = ("import os, sys; from synthledger.engine.experiment.executor_local import _die_with_parent; "
            "_die_with_parent(int(sys.argv[1])); print('alive')")
    gone = subprocess.run([sys.executable, "-c", code, "1"], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "alive" not in gone.stdout
    here = subprocess.run([sys.executable, "-c", code.replace("int(sys.argv[1])", "os.getppid()")],
                          capture_output=True, text=True, timeout=60)
    assert here.returncode == 0 and "alive" in here.stdout
