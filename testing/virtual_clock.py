"""A virtual clock for a running asyncio loop: timers fire in order at once, and the loop's time
jumps to each, so a test of pacing asserts exact figures in no real time instead of tolerances
that a busy machine can still break.

Real loops are not punctual; `lateness` puts that back on purpose: a function of the wait asked
for that returns how much later than asked the loop wakes up (a busy event loop, a coarse timer),
drawn from a seeded generator so a failure can be replayed.

    with VirtualClock(asyncio.get_running_loop(), lateness=lambda wait: rng.uniform(0, 0.004)):
        ...  # anyio.current_time(), anyio.sleep, fail_after and move_on_after all follow it

Only timers are virtual. A loop waiting on I/O with no timer due waits for real, so this is for
code that sleeps and schedules, not for code that talks to a server.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class VirtualClock:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 lateness: Callable[[float], float] | None = None) -> None:
        self.loop: Any = loop
        self.lateness = lateness
        self.now = loop.time()
        self.late_s = 0.0  # lateness added so far, for a test to check it really happened

    def time(self) -> float:
        return self.now

    def _select(self, real_select: Callable[[float | None], Any], timeout: float | None) -> Any:
        if timeout is None:  # nothing scheduled: only I/O (or another thread) can wake the loop
            return real_select(None)
        if timeout > 0:
            extra = self.lateness(timeout) if self.lateness is not None else 0.0
            self.now += timeout + extra
            self.late_s += extra
        return real_select(0)

    def __enter__(self) -> "VirtualClock":
        selector = self.loop._selector
        real_select = selector.select
        self._restore = (selector, real_select)
        self.loop.time = self.time
        selector.select = lambda timeout=None: self._select(real_select, timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        selector, real_select = self._restore
        selector.select = real_select
        del self.loop.time


async def paced_sends(limiter: Any, estimate: Any, counted: Any, latency_s: float, n: int) -> list[float]:
    """The send times of `n` requests through a RateLimiter on a virtual clock: each acquires
    `estimate`, goes on the wire at once and settles to `counted` `latency_s` later, as the
    dispatcher does with a provider's answer."""
    import anyio

    sent: list[float] = []

    async def one() -> None:
        await limiter.acquire(estimate)
        limiter.sent(estimate)
        sent.append(anyio.current_time())
        await anyio.sleep(latency_s)
        limiter.settle(estimate, counted)

    with VirtualClock(asyncio.get_running_loop()):
        with anyio.fail_after(3600):  # (virtual seconds: a deadlock fails, never hangs)
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
    return sent
