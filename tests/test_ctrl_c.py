"""A Ctrl-C that lands inside a finalizer is not lost by a training or evaluation run.

Python raises the KeyboardInterrupt wherever the main thread is, and one raised inside `__del__` is
printed as "ignored" and dropped: loading a model runs many finalizers, and a Ctrl-C there left the run
training (CI saw `test_ctrl_c_mid_training_records_the_run_as_interrupted_and_says_so` time out)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from synthledger.engine.student.ctrl_c import guarded_ctrl_c


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
