"""A resume folds the run's log, then takes its lease. A holder thought gone (frozen, slow) may
append in between: QA's resume took over a run whose holder had gone on settling queries, or had
finished, and paid for them again - 308 requests against a budget of 200, on SQLite and PostgreSQL.
The lease is now taken only while the log still ends where the resume read it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from synthledger.engine.ledger.events import RunStarted, RunWarning
from synthledger.engine.ledger.journal import Journal
from synthledger.store.errors import RunMovedOn
from synthledger.store.eventstore import EventStore
from synthledger.store.records import owner_token
from synthledger.testing.cli_runs import CLI, Project, Server, env, last_line, wait_for


def test_the_lease_is_taken_only_while_the_log_ends_where_it_was_read(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    started = RunStarted(config={}, config_hash="c", plan_hash="", version="test", kind="generate", budget={})
    holder = owner_token()
    journal = Journal.start(store, "r", {}, "c", [started], kind="generate", owner=holder, durable_each=True)
    read = store.get_run(journal.run_id).last_seq  # what a resume folded
    journal.emit(RunWarning(kind="test", message="appended after the read"))
    store.release(journal.run_id, holder)
    with pytest.raises(RunMovedOn):
        store.acquire(journal.run_id, owner_token(), at_seq=read)
    assert store.get_run(journal.run_id).owner is None  # not taken
    store.acquire(journal.run_id, owner_token(), at_seq=read + 1)
    store.close()


SLOW_ACQUIRE = textwrap.dedent("""
    import runpy, sys, time
    from synthledger.store import eventstore
    take, marker, delay = eventstore.EventStore.acquire, sys.argv[1], float(sys.argv[2])
    def slow(self, *a, **k):  # a loaded machine: the resume's fold done, its lease taken late
        open(marker, "w").close()
        time.sleep(delay)
        return take(self, *a, **k)
    eventstore.EventStore.acquire = slow
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def test_a_resume_whose_holder_finished_while_it_read_the_log_pays_for_nothing_again(tmp_path):
    srv = Server("--latency-ms", "1000")  # the first run is slow until the second has read the log
    try:
        proj = Project(tmp_path, srv.url, seeds=40)
        cfg = proj.write(budget={"queries": 40}, limits={"max_concurrency": 2})
        first = proj.popen(cfg)
        wait_for(lambda: len(proj.events("query_settled")) >= 4, 60, "the run to settle some queries")
        shim, folded = tmp_path / "slow_acquire.py", tmp_path / "folded"
        shim.write_text(SLOW_ACQUIRE)
        # The second reads the log while the first runs, and takes the lease after it finished.
        second = subprocess.Popen([sys.executable, str(shim), str(folded), "5", CLI, "generate", "--config", str(cfg),
                                   "--resume", "--no-progress"], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        wait_for(lambda: folded.exists() or second.poll() is not None, 60, "the second to fold the log")
        assert folded.exists(), second.communicate()
        srv.control(latency_ms=0)  # now the first finishes, well before the second takes the lease
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        run_id, status = last_line(subprocess.CompletedProcess([], 0, out, err))
        assert status == "budget_exhausted"
        out, err = second.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert srv.stats()["answered"] == 40, "the resume paid again for what the first had settled"
        report = proj.audit(run_id)
        assert report["spent"]["queries"] == 40
    finally:
        srv.close()
