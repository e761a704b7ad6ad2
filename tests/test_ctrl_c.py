"""A Ctrl-C that lands inside a finalizer is not lost by a training or evaluation run, and one that
lands while such a run is being opened or closed cannot leave it `running`.

Python raises the KeyboardInterrupt wherever the main thread is, and one raised inside `__del__` is
printed as "ignored" and dropped: loading a model runs many finalizers, and a Ctrl-C there left the run
training (CI saw `test_ctrl_c_mid_training_records_the_run_as_interrupted_and_says_so` time out).
An experiment on Ray cancels a job with a Ctrl-C (`_thread.interrupt_main`, as here), and under load it
came while the job's run was being opened: the run was left `running` in a worker Ray kept alive."""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading

import pytest

from synthledger.engine.student.ctrl_c import guarded_ctrl_c
from synthledger.engine.student.runs import Interrupted, _recorded, open_log
from synthledger.store.eventstore import EventStore
from synthledger.store.lite import LiteConnection


class _InterruptedWhileFinalized:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(200_000):  # the handler runs here, inside __del__
            pass


@pytest.fixture(autouse=True)
def _python_handles_ctrl_c():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (a test runner may have its own)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def ignored(monkeypatch) -> list[type]:
    """What Python reports as "Exception ignored in ..." (a finalizer's exception)."""
    seen: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info.exc_type))
    return seen


def test_python_itself_loses_a_ctrl_c_raised_in_a_finalizer(ignored):
    _InterruptedWhileFinalized()  # no KeyboardInterrupt comes out of this line
    assert ignored == [KeyboardInterrupt]  # only "Exception ignored in ..."


def test_a_guarded_run_raises_it_at_its_next_event_and_prints_nothing(ignored):
    recorded = []
    with guarded_ctrl_c() as ctrl_c:
        record = ctrl_c.guarding(lambda type_, payload: recorded.append(type_))
        _InterruptedWhileFinalized()
        with pytest.raises(KeyboardInterrupt):
            record("training_progress", {"step": 1})
    assert recorded == [] and ignored == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_experiment_waiting_for_its_jobs_raises_a_ctrl_c_lost_in_a_finalizer(ignored):
    # The driver waits on its train/eval jobs for most of an experiment; a Ctrl-C lost before it
    # began to wait left it waiting for every job to finish (here: the job ends after 10 s).
    from concurrent.futures import Future

    from synthledger.engine.experiment.driver import wait_for_one

    job: Future = Future()
    finish = threading.Timer(10, job.set_result, ({},))
    finish.start()
    try:
        with guarded_ctrl_c() as ctrl_c:
            _InterruptedWhileFinalized()
            with pytest.raises(KeyboardInterrupt):
                wait_for_one([job], ctrl_c)
    finally:
        finish.cancel()
    assert not job.done() and ignored == []


def test_an_ordinary_ctrl_c_still_raises_where_it_lands_and_nothing_is_left_behind():
    with pytest.raises(KeyboardInterrupt):
        with guarded_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000_000):
                pass
    with guarded_ctrl_c() as ctrl_c:
        ctrl_c.check()  # a new run starts with nothing pressed


def test_a_worker_that_ignores_ctrl_c_keeps_ignoring_it():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as an experiment's worker does
    with guarded_ctrl_c() as ctrl_c:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        ctrl_c.check()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def _ctrl_c_here() -> None:
    """A Ctrl-C that lands in the middle of the caller's step (the handler runs within the loop)."""
    _thread.interrupt_main()
    for _ in range(200_000):
        pass


@pytest.fixture
def store(tmp_path):
    st = EventStore(f"sqlite:///{tmp_path / 'store.db'}")
    yield st
    st.close()


def _stopped_by(*args) -> KeyboardInterrupt | None:
    """What `_recorded(*args)` raised (caught here, so a regression fails the test, not the session)."""
    try:
        _recorded(*args)
    except KeyboardInterrupt as exc:
        return exc
    return None


def _status(store: EventStore) -> str:
    [info] = store.list_runs()
    return info.status


def test_a_ctrl_c_while_the_run_is_opened_closes_it_as_interrupted(store):
    worked = []

    def open_run():
        log = open_log(store, "train-x", "train", {"source": "x"})  # the run exists from here on
        _ctrl_c_here()
        return log

    stopped = _stopped_by("train", open_run, lambda on_event: worked.append(1), lambda log, result: "done")
    assert isinstance(stopped, Interrupted)
    assert _status(store) == "interrupted" and worked == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_while_the_runs_end_is_recorded_lets_it_complete_then_stops_the_caller(store, monkeypatch):
    commit = LiteConnection.commit

    def closing(log, result):  # the work is done: from the next commit on, the run's end is being written
        fired = []

        def ctrl_c_in_commit(conn):  # the SQLite file's own connection, as a store opens it by default
            if not fired:
                fired.append(1)
                _ctrl_c_here()
            commit(conn)

        monkeypatch.setattr(LiteConnection, "commit", ctrl_c_in_commit)
        return "done"

    stopped = _stopped_by("eval", lambda: open_log(store, "eval-x", "eval", {}), lambda on_event: {"accuracy": 1.0},
                          closing)
    assert stopped is not None and not isinstance(stopped, Interrupted)  # the run itself was not interrupted
    assert _status(store) == "completed"


def test_a_ctrl_c_while_the_run_leaves_its_files_closes_it_as_interrupted(store):
    def closing(log, result):  # (a trainer's provenance.json: without it the run is not complete)
        _ctrl_c_here()
        return "done"

    stopped = _stopped_by("train", lambda: open_log(store, "train-z", "train", {}), lambda on_event: {}, closing)
    assert isinstance(stopped, Interrupted)
    assert _status(store) == "interrupted"


def test_a_ctrl_c_during_the_work_closes_the_run_as_interrupted(store):
    def work(on_event):
        on_event("training_progress", {"step": 1})
        _ctrl_c_here()

    stopped = _stopped_by("train", lambda: open_log(store, "train-y", "train", {}), work, lambda log, result: "done")
    assert isinstance(stopped, Interrupted)
    assert _status(store) == "interrupted"
