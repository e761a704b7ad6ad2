"""Ctrl-C or SIGTERM while `generate`'s start waits for its SQLite store (another process holds the
write lock) end the process at once, saying so; nothing was recorded. QA: the signal did nothing
until the busy timeout ran out (10 s, or as long as SYNTHLEDGER_BUSY_TIMEOUT says)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from synthledger.testing.cli_runs import CLI, env
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_ends_a_start_that_waits_for_a_locked_store(tmp_path, sig, code):
    store = tmp_path / "store.db"
    with run_in_thread() as teacher:  # a first run makes the store, as a user's earlier runs did
        config = write_project(tmp_path, teacher.url, name="first", queries=2)
        first = subprocess.run([sys.executable, CLI, "generate", "--config", str(config), "--no-progress",
                                "--store", f"sqlite:///{store}"], env=env(), capture_output=True, text=True,
                               cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write, under way for as long as it takes
    proc = subprocess.Popen([sys.executable, CLI, "generate", "--config", str(config), "--no-progress", "--name",
                             "waiting", "--store", f"sqlite:///{store}"],
                            env={**env(), "SYNTHLEDGER_BUSY_TIMEOUT": "60"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        time.sleep(2.0)  # in SQLite's busy wait by now (start-up takes well under a second)
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == code and waited < 5, (proc.returncode, waited, err)
    assert (f"synthledger: {signal.Signals(sig).name} while the run's start waited for its store "
            f"({store}): nothing was recorded") in err
    names = [name for (name,) in sqlite3.connect(store).execute("SELECT name FROM runs")]
    assert names == ["first"]
