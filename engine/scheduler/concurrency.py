"""How many requests to keep in flight, found by AIMD (as TCP finds its window).

A provider's capacity is rarely known; rate-limit responses are the signal that we went past it.
Each success grows the limit by 1/limit (so +1 per `limit` successes); a rate-limit response
halves it, at most once per `cooldown_s`, because the 429s from one overload arrive together and
describe a single event. Shrinking never cancels work already in flight: it only holds back new
acquisitions until in-flight drops below the new limit.

Two starts: with `slow_start` (used when nothing is known about the provider's limits) the limit
grows by one per success, doubling every round trip, until the first 429, so an unknown provider
is probed rather than hit with a full burst. `raise_to` lifts the limit to what a known rate needs
at the observed latency (Little's law: in flight = rate x latency), instead of growing into it.

Two ceilings: `maximum` bounds everything, `growth_cap` (when given) only the growth from successes.
A rate needs what its latency needs (100/s at 6 s is 600 in flight), but with no rate known, more
in flight than a probe's cap only queues requests at the provider.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Callable

import anyio

__all__ = ["AdaptiveConcurrency"]


class _Slot:
    __slots__ = ("_owner",)

    def __init__(self, owner: AdaptiveConcurrency) -> None:
        self._owner = owner

    async def __aenter__(self) -> None:
        await self._owner.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner.release()


class AdaptiveConcurrency:
    """A FIFO semaphore whose size follows AIMD. Use `async with acc.slot(): ...`."""

    def __init__(
        self,
        initial: int,
        maximum: int,
        minimum: int = 1,
        *,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = anyio.current_time,
        slow_start: bool = False,
        growth_cap: int | None = None,
    ) -> None:
        for name, v in (("initial", initial), ("maximum", maximum), ("minimum", minimum)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"AdaptiveConcurrency: {name} must be an integer >= 1, got {v!r}")
        if not minimum <= initial <= maximum:
            raise ValueError(
                f"AdaptiveConcurrency: need minimum <= initial <= maximum, got {minimum} <= {initial} <= {maximum}"
            )
        if not cooldown_s >= 0:
            raise ValueError(f"AdaptiveConcurrency: cooldown_s must be >= 0, got {cooldown_s!r}")
        self.minimum = minimum
        self.maximum = maximum
        self.growth_cap = maximum if growth_cap is None else max(1, min(growth_cap, maximum))
        self.cooldown_s = float(cooldown_s)
        self._clock = clock
        self._limit = initial
        self._in_flight = 0
        self._successes = 0  # successes since the limit last changed
        self._last_cut: float | None = None
        self._slow_start = slow_start
        self._waiters: deque[anyio.Event] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def slot(self) -> _Slot:
        return _Slot(self)

    async def acquire(self) -> None:
        """Take a slot, waiting in FIFO order while in-flight >= limit. Prefer `slot()`."""
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            return
        granted = anyio.Event()
        self._waiters.append(granted)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():
                self.release()  # handed a slot just as we were cancelled: pass it on
            else:
                self._waiters.remove(granted)
            raise

    def release(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("AdaptiveConcurrency.release() without a matching acquire()")
        self._in_flight -= 1
        self._grant()

    def _grant(self) -> None:
        # The granter counts the slot for the waiter, so nobody can overtake it before it runs.
        while self._waiters and self._in_flight < self._limit:
            self._in_flight += 1
            self._waiters.popleft().set()

    def on_success(self) -> None:
        """Additive increase: +1 after each `limit` successes, up to `growth_cap`."""
        if self._limit >= self.growth_cap:
            return
        if self._slow_start:
            self._limit += 1
            self._grant()
            return
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            self._limit += 1
            self._grant()

    def on_rate_limited(self) -> bool:
        """Multiplicative decrease (halve, not below `minimum`), once per `cooldown_s`.

        Returns whether this call cut the limit."""
        now = self._clock()
        if self._last_cut is not None and now - self._last_cut < self.cooldown_s:
            return False
        self._last_cut = now
        self._slow_start = False
        self._successes = 0
        self._limit = max(self.minimum, self._limit // 2)
        return True

    def raise_to(self, limit: int) -> None:
        """At least `limit` (capped at `maximum`): what a known rate needs at the observed latency."""
        limit = min(self.maximum, int(limit))
        if limit > self._limit:
            self._limit = limit
            self._grant()

    def back_to_probing(self) -> None:
        """No rate is known any more (a learned or inferred one was dropped): what only a rate could
        ask for goes, and growth from successes starts again at `growth_cap` at most. In-flight
        work is not cancelled; new acquisitions wait until it drops below."""
        if self._limit > self.growth_cap:
            self._limit = self.growth_cap
            self._successes = 0

    def __repr__(self) -> str:
        return (
            f"AdaptiveConcurrency(limit={self._limit}, in_flight={self._in_flight}, "
            f"waiting={len(self._waiters)}, range=[{self.minimum}, {self.maximum}], growth_cap={self.growth_cap})"
        )
