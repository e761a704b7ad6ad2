"""The throwaway PostgreSQL cluster of the tests does not outlive a test run killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


CHILD = """
from synthledger.testing.postgres import PgCluster
import sys, time
c = PgCluster().start()
print(c.root, flush=True)
time.sleep(600)
"""


def server_running(root: Path) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"postgres" in cmd and str(root).encode() in cmd:
            return True
    return False


def test_a_killed_owner_leaves_no_server_and_no_folder(pg_cluster):  # (the session's: skips, or fails in CI, alike)
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    root = Path(child.stdout.readline().strip())
    assert root.name.startswith("slpg-") and server_running(root)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 60
    while (root.exists() or server_running(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not server_running(root), "the cluster's server outlived the process that started it"
    assert not root.exists(), "the cluster's folder was left behind"
