"""Train/eval jobs as Ray tasks with declared resources (`num_gpus`, `num_cpus` per task), so a
grid spreads over a cluster's GPUs while the driver runs the generation cells.

Workers reach the store by its URL (PostgreSQL on a cluster; SQLite on one machine) and run the
same job function as the local executor.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from .stages import train_eval_job


# How long a stopped experiment waits for its cancelled tasks to end (see `shutdown`).
CANCEL_WAIT_S = 30.0


class RayExecutor:
    name = "ray"

    def __init__(self, parallel: int, num_cpus: float = 1, num_gpus: float = 0, address: str | None = None) -> None:
        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            self._started = True
        self._task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(train_eval_job)
        self._refs: list[Any] = []
        self.killed = False  # whether a stop had to kill a task (the driver's sweep then waits for it)

    def submit(self, job: dict[str, Any]) -> Future:
        ref = self._task.remote(job)
        self._refs.append(ref)
        return ref.future()

    def shutdown(self, cancel: bool = False) -> None:
        """With `cancel` (a stopped experiment), the tasks still going are stopped and awaited first:
        on a cluster the driver joined they would train on after it left, holding its GPUs, and
        their runs would read `running` until they ended (a rerun redoes their cells anyway).

        A cancel is a Ctrl-C in the task, so a job closes its own run as interrupted, as one does
        in the terminal, even when the cancel comes while the run is being opened (student/ctrl_c).
        That matters here: Ray keeps the worker process for reuse, so the driver's sweep, which
        closes only runs whose process is gone, cannot close such a run. A job that has not stopped
        within CANCEL_WAIT_S is killed, and its run is left to that sweep, which waits a moment for
        the killed process to be gone (`killed`)."""
        if cancel and self._refs:
            for ref in self._refs:
                self._ray.cancel(ref)  # (a finished one is left as it is)
            _, left = self._ray.wait(self._refs, num_returns=len(self._refs), timeout=CANCEL_WAIT_S)
            for ref in left:
                self._ray.cancel(ref, force=True)
            if left:
                self.killed = True
                self._ray.wait(left, num_returns=len(left), timeout=CANCEL_WAIT_S)
        if self._started:
            self._ray.shutdown()

