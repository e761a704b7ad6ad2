"""The collector's settings during a run: raised and start-up frozen while it runs, and left as they
were afterwards, also when runs nest or a run fails."""

from __future__ import annotations

import gc
import threading

import pytest

import synthledger
from synthledger.engine.run.collector import RUN_THRESHOLD, tuned_for_a_run
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread


def test_settings_are_raised_inside_and_restored_by_the_outermost_run():
    before = gc.get_threshold()
    with tuned_for_a_run():
        assert gc.get_threshold()[0] >= RUN_THRESHOLD and gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
        with tuned_for_a_run():  # a run inside a run (an experiment's cell)
            pass
        assert gc.get_threshold()[0] >= RUN_THRESHOLD  # the inner end did not restore early
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0

    with pytest.raises(RuntimeError):
        with tuned_for_a_run():
            raise RuntimeError("a run that fails")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def tracked(obj: object) -> bool:
    """Whether the collector still walks `obj`: frozen objects are not among gc.get_objects()."""
    return any(o is obj for o in gc.get_objects())


def test_a_freeze_the_process_made_itself_is_kept():
    # (The freeze count itself moves as frozen objects are freed, so the test follows two objects.)
    frozen_by_the_process = ["start-up"]
    gc.freeze()  # as a server does after start-up
    try:
        made_later = ["after the freeze"]
        with tuned_for_a_run():
            assert gc.get_threshold()[0] >= RUN_THRESHOLD
            assert tracked(made_later)  # the run did not freeze on top of the process's freeze
        assert not tracked(frozen_by_the_process)  # the run's end did not unfreeze it
        assert tracked(made_later)
    finally:
        gc.unfreeze()


def test_generate_runs_with_them_and_leaves_the_process_as_it_was(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHLEDGER_STORE", raising=False)
    before = gc.get_threshold()
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(gc.get_threshold()[0])
            done.wait(0.001)

    with run_in_thread() as server:
        config = write_project(tmp_path, server.url, name="gc", seeds=3, queries=3)
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            result = synthledger.generate(config, store=f"sqlite:///{tmp_path / 'store.db'}")
        finally:
            done.set()
            watcher.join()
    assert result.ok
    assert max(seen) >= RUN_THRESHOLD
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
