"""A frozen lease holder: SIGSTOP past its lease, a `--resume` takes over, then SIGCONT.

Both sides must end cleanly. While the holder's lease is fresh a second process is refused in one
line; once it has expired the second process takes the run over (its run_resumed event names the
process it replaced); the original, continued, finds its lease gone at its next commit, stops
without sending anything more, says which process took the run, and exits non-zero in one line.
Nothing either process committed is lost, and the run ends exactly on its budget.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthledger.testing.projects import write_project
from synthledger.testing.reliability import ForkedCli, ServerProcess, check_run_exact, run_events

TTL = 4.0


def _write_locked(db: Path) -> bool:
    """Whether some connection holds the store's write lock right now."""
    con = sqlite3.connect(db, timeout=0)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.rollback()
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        con.close()


def _stop_outside_a_commit(pid: int, db: Path) -> None:
    """SIGSTOP the process at an instant when it holds no write lock (a process frozen inside a
    commit blocks every writer: that case is the 'store is busy' test below)."""
    for _ in range(200):
        os.kill(pid, signal.SIGSTOP)
        if not _write_locked(db):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.003)
    raise AssertionError("could not stop the run outside a commit")


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _count(db: Path, type_: str) -> int:
    if not db.exists():
        return 0
    try:
        return sum(1 for _, t, _, _ in run_events(db) if t == type_)
    except (sqlite3.OperationalError, AssertionError):
        return 0


def test_a_frozen_holder_is_taken_over_and_stops_cleanly_when_continued(tmp_path):
    with ServerProcess("--latency-ms", "60") as server:
        config = write_project(tmp_path, server.url, seeds=8, queries=60, extra="\n[limits]\nmax_concurrency = 2\n")
        db = tmp_path / "store.db"
        args = ["generate", "--config", str(config), "--no-progress", "--store", f"sqlite:///{db}",
                "--set", f"run.lease_ttl_s={TTL}"]
        original = ForkedCli(args, cwd=tmp_path)
        _wait(lambda: _count(db, "query_settled") >= 6, 60, "the first run to be under way")
        _stop_outside_a_commit(original.pid, db)
        stopped_at = time.monotonic()
        try:
            settled_before = {p["query_id"] for _, t, p, _ in run_events(db) if t == "query_settled"}

            # While the lease is fresh: refused at once, in one line.
            busy = ForkedCli([*args, "--resume"], cwd=tmp_path).wait(60)
            assert time.monotonic() - stopped_at < TTL, "too slow to test the fresh lease"
            assert busy.rc == 2 and "another process" in busy.error_line(), busy

            # Once it has expired: taken over.
            time.sleep(max(0.0, stopped_at + TTL + 0.5 - time.monotonic()))
            taker = ForkedCli([*args, "--resume"], cwd=tmp_path)
            _wait(lambda: _count(db, "run_resumed") >= 1 or taker.poll() is not None, 60, "the takeover")
            assert taker.poll() is None, f"the taker ended early: {taker.result}"
        finally:
            os.kill(original.pid, signal.SIGCONT)
        lost = original.wait(60)
        done = taker.wait(120)

        line = lost.error_line()
        assert lost.rc != 0 and f"taken over by process {taker.pid}" in line, lost.stderr
        assert "sent nothing more" in line and "is kept" in line
        assert done.rc == 0 and done.last_line()[2] == "budget_exhausted", done

        events = run_events(db)
        resumed = [p for _, t, p, _ in events if t == "run_resumed"]
        assert len(resumed) == 1 and resumed[0]["pid"] == taker.pid and resumed[0]["host"]
        assert resumed[0]["previous_owner"].split(":")[-2] == str(original.pid)
        run_id = resumed[0]["owner"] and _run_id(db)
        result = check_run_exact(f"sqlite:///{db}", run_id, 60)
        assert settled_before <= set(result["settled"]), "answers settled before the freeze were lost"
        # The original sent nothing it had not recorded first: every request the server saw is a
        # recorded dispatch (of either process).
        dispatched = sum(1 for _, t, _, _ in events if t == "query_dispatched")
        assert server.stats()["received"] == dispatched


def _run_id(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id FROM runs").fetchone()[0]
    finally:
        con.close()


def test_a_takeover_while_the_store_is_write_locked_says_busy_in_one_line(tmp_path):
    # A holder frozen inside a commit keeps the store's write lock: the taker cannot take over,
    # and must say so in one line instead of a "database is locked" traceback.
    with ServerProcess() as server:
        config = write_project(tmp_path, server.url, seeds=4, queries=30)
        db = tmp_path / "store.db"
        args = ["generate", "--config", str(config), "--no-progress", "--store", f"sqlite:///{db}"]
        first = ForkedCli([*args, "--set", "budget.queries=4"], cwd=tmp_path).wait(60)
        assert first.rc == 0, first
        holder = sqlite3.connect(db, timeout=0)
        holder.execute("BEGIN IMMEDIATE")
        try:
            taker = ForkedCli(["--busy-timeout", "1", *args, "--resume", "--run", _run_id(db)], cwd=tmp_path).wait(120)
        finally:
            holder.rollback()
            holder.close()
        assert taker.rc == 2 and "busy" in taker.error_line(), taker


HOLD_WRITE_LOCK = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=0)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("resume", [True, False])
def test_two_starts_of_one_run_at_once_make_one_run(tmp_path, resume):
    """Two `generate --resume` of a run killed before its first commit (or two `generate` of one new
    config) started together: both find the name free, so only the insert's own lock can decide.
    The store's write lock is held while both start, so both have looked before either inserts.
    One run is made; the other process is refused in one line (the lease, or the name) and paid
    nothing."""
    with ServerProcess("--latency-ms", "150") as server:
        config = write_project(tmp_path, server.url, name="once", seeds=4, queries=12,
                               extra="\n[limits]\nmax_concurrency = 1\n")
        db = tmp_path / "store.db"
        url = f"sqlite:///{db}"
        args = ["--busy-timeout", "60", "generate", "--config", str(config), "--no-progress", "--store", url]
        first = ForkedCli([*args, "--name", "other", "--set", "budget.queries=1", "--set", "run.replicate=1"], cwd=tmp_path).wait(60)
        assert first.rc == 0, first  # the store exists; the run `once` has never started
        server.reset()
        # The lock is held by a process of its own: a connection open in this one would be copied
        # into the forked children, and SQLite's per-process lock records with it.
        holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, str(db)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            starts = [ForkedCli([*args, *(["--resume"] if resume else [])], cwd=tmp_path) for _ in range(2)]
            # Each prints its store line before it looks for the name; give both time to look.
            _wait(lambda: all(p._err.exists() and "store " in p._err.read_text() for p in starts), 30,
                  "both processes to open the store")
            time.sleep(2.0)
            assert all(p.poll() is None for p in starts)
        finally:
            holder.kill()  # its lock goes with it (it wrote nothing)
            holder.wait(30)
        done = [p.wait(120) for p in starts]
        con = sqlite3.connect(db)
        try:
            runs = [r[0] for r in con.execute("SELECT id FROM runs WHERE name = 'once'")]
        finally:
            con.close()
        assert len(runs) == 1, f"{len(runs)} runs named 'once': {[d.stderr for d in done]}"
        ok = [d for d in done if d.rc == 0]
        refused = [d for d in done if d.rc != 0]
        assert len(ok) == 1 and len(refused) == 1, done
        line = refused[0].error_line()
        assert refused[0].rc == 2
        assert ("being extended by another process" if resume else f"is taken by run {runs[0]}") in line, line
        check_run_exact(url, runs[0], 12)
        assert server.settled_stats()["answered"] == 12  # the refused process sent nothing
