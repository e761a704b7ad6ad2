"""The event loop a run's queries are driven on.

A zero-latency run spends about a sixth of its main thread in the event loop's own Python code
(scheduling callbacks, selecting, reading sockets: benchmarks/throughput.py, scenario c). uvloop's
loop does that part in C over libuv. Over eight interleaved pairs of 10,000-query runs it settled
1,251 queries a second (median) where the standard loop settled 1,174, with 860 us of CPU per
query instead of 905. It is a dependency wherever it builds (not on Windows); elsewhere the
standard loop runs, and nothing else changes.

`SYNTHLEDGER_EVENT_LOOP=asyncio` picks the standard loop anyway: the way to rule uvloop out when
chasing a bug. `=uvloop` insists on it, and fails at once where it is missing.
"""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import anyio

from ..errors import ConfigError

ENV = "SYNTHLEDGER_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")

T = TypeVar("T")


def drive(fn: Callable[..., Awaitable[T]], *args: Any, uvloop: bool | None = None) -> T:
    """`anyio.run(fn, *args)` on uvloop or not (None: as `use_uvloop()` says). Call `use_uvloop()`
    before recording anything, so a bad setting fails before the run exists."""
    return anyio.run(fn, *args, backend_options={"use_uvloop": use_uvloop() if uvloop is None else uvloop})


def use_uvloop() -> bool:
    choice = os.environ.get(ENV, "").strip().lower()
    if choice and choice not in CHOICES:
        raise ConfigError(f"{ENV}={choice!r} is not an event loop: use one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(f"{ENV}=uvloop, but uvloop is not installed (pip install uvloop)") from None
        return False
    return True


def time_limit(seconds: float) -> Any:
    """Raise TimeoutError in the enclosed block after `seconds`: `asyncio.timeout` where it exists
    (3.11+), `anyio.fail_after` before. Runs are always driven on asyncio, and a send enters one of
    these per attempt: around an awaited no-op, anyio's cancel scope added 24 us and asyncio's 5.
    Both let a cancellation from outside (the run stopping) through as a cancellation."""
    if sys.version_info >= (3, 11):
        return asyncio.timeout(seconds)
    return _fail_after(seconds)


@asynccontextmanager
async def _fail_after(seconds: float) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):  # (a cancel scope is entered with `with`; callers use `async with`)
        yield
