"""Train/eval jobs in a pool of local processes.

Processes, not threads: training holds the GIL and its own torch thread pool. Each worker asks
the kernel to kill it when the driver dies, so a `kill -9` of the experiment leaves no orphan
training behind to race the rerun.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from .stages import train_eval_job


def _die_with_parent(driver_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != driver_pid:  # the driver died before we asked: the kernel will not tell us
        os._exit(1)  # (QA: two workers trained and evaluated on for a minute with nobody to report to)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle


class LocalExecutor:
    name = "local"

    def __init__(self, parallel: int, num_cpus: float = 1, num_gpus: float = 0) -> None:
        self.pool = ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_die_with_parent, initargs=(os.getpid(),))

    def submit(self, job: dict[str, Any]) -> Future:
        return self.pool.submit(train_eval_job, job)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            procs = list(getattr(self.pool, "_processes", {}).values())
            for proc in procs:
                proc.kill()  # a training in flight restarts cleanly on the rerun
            for proc in procs:  # reaped, so the runs they held can be seen to have lost their process
                proc.join(10)
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)
