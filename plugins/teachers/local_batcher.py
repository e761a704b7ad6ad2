"""Micro-batching of concurrent calls: requests that arrive together run as one batch.

A local model answers a batch of 16 prompts in little more time than one, but the engine issues
queries one coroutine at a time. This collects them: the first waiting call leads, waits up to
`wait_s` (or until the batch is full), runs the batch in a worker thread and hands every caller
its own result, then passes the lead to the oldest call still waiting. There is no background
task to own or leak, and it works on any anyio backend.

Only calls with the same `key` (e.g. identical sampling settings) share a batch; `rows` is how
much of the batch a call occupies (e.g. `n` samples).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Job(Generic[T]):
    item: Any
    key: Hashable
    rows: int
    arrived: float
    signal: anyio.Event = field(default_factory=anyio.Event)
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R | BaseException]],
        *,
        max_rows: int,
        wait_s: float,
        key: Callable[[T], Hashable] = lambda item: None,
        rows: Callable[[T], int] = lambda item: 1,
    ) -> None:
        """`run_batch` runs in a worker thread and returns one result or exception per item."""
        if max_rows < 1:
            raise ValueError(f"batch size must be >= 1, got {max_rows}")
        self._run_batch = run_batch
        self._max_rows = max_rows
        self._wait_s = max(0.0, wait_s)
        self._key = key
        self._rows = rows
        self._queue: list[_Job[T]] = []
        self._leader: _Job[T] | None = None
        self._full: anyio.Event | None = None  # created inside the event loop, not at construction

    async def submit(self, item: T) -> R:
        job: _Job[T] = _Job(item, self._key(item), max(1, self._rows(item)), time.monotonic())
        self._queue.append(job)
        self._note_fullness()
        try:
            while not job.done:
                if self._leader is None:
                    self._leader = job
                    try:
                        await self._lead(job)
                    finally:
                        self._leader = None
                        if job in self._queue:  # the leader was cancelled before its batch started
                            self._queue.remove(job)
                        self._promote_next()
                else:
                    await job.signal.wait()
                    job.signal = anyio.Event()
        except BaseException:
            if job in self._queue:  # cancelled while waiting: it will not run, and must not hold the lead
                self._queue.remove(job)
                if self._leader is None:
                    self._promote_next()
            raise
        if job.error is not None:
            raise job.error
        return job.result

    def _full_event(self) -> anyio.Event:
        if self._full is None:
            self._full = anyio.Event()
        return self._full

    def _note_fullness(self) -> None:
        if self._queue and self._rows_for(self._queue[0].key) >= self._max_rows:
            self._full_event().set()

    def _rows_for(self, key: Hashable) -> int:
        return sum(j.rows for j in self._queue if j.key == key)

    def _promote_next(self) -> None:
        if self._queue:
            self._queue[0].signal.set()

    def _take_batch(self) -> list[_Job[T]]:
        key = self._queue[0].key
        batch: list[_Job[T]] = []
        rows = 0
        for job in list(self._queue):
            if job.key != key:
                continue
            if batch and rows + job.rows > self._max_rows:
                break
            batch.append(job)
            rows += job.rows
        for job in batch:
            self._queue.remove(job)
        self._full = None
        self._note_fullness()
        return batch

    async def _lead(self, me: _Job[T]) -> None:
        # The leader is always the oldest waiting call, so its own job is in the batch it runs.
        deadline = self._queue[0].arrived + self._wait_s
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await self._full_event().wait()
        batch = self._take_batch()
        with anyio.CancelScope(shield=True):  # a started batch always resolves all its callers
            try:
                results = await anyio.to_thread.run_sync(self._run_batch, [j.item for j in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
            except Exception as exc:  # noqa: BLE001 - every caller gets the failure
                results = [exc] * len(batch)
        for job, result in zip(batch, results):
            if isinstance(result, BaseException):
                job.error = result
            else:
                job.result = result
            job.done = True
            if job is not me:
                job.signal.set()
