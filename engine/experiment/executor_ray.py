"""Train/eval jobs as Ray tasks with declared resources (`num_gpus`, `num_cpus` per task), so a
grid spreads over a cluster's GPUs while the driver runs the generation cells.

Workers reach the store by its URL (PostgreSQL on a cluster; SQLite on one machine) and run the
same job function as the local executor.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from .stages import train_eval_job


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

    def submit(self, job: dict[str, Any]) -> Future:
        return self._task.remote(job).future()

    def shutdown(self, cancel: bool = False) -> None:
        if self._started:
            self._ray.shutdown()

