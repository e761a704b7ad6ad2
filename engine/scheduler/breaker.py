"""Stop sending to a provider that keeps failing, then test it with a single probe.

When the provider is down, every request spent on it is wasted time (and, for failures that may
have been billed, money). After `failure_threshold` consecutive failures the breaker opens and
holds everyone for a cooldown; then one probe goes through. Its success closes the breaker and
releases everyone; its failure re-opens it (for a longer cooldown when `cooldown_factor` > 1).

The breaker counts whatever the caller reports: rate limiting is the limiter's business, so the
caller should report neither success nor failure for a 429.

If a probe never reports back (its caller was cancelled, or the outcome was not reportable), the
probe slot expires after the current cooldown and the next waiter becomes the probe, so the
breaker cannot stay half-open forever.

With `max_openings`, the breaker that opens for the last time stays open: the caller stops the run
on that opening, and a probe let through meanwhile would only fail and open it once more than the
run was told it would (and than its stop message says).
"""

from __future__ import annotations

import math
from typing import Literal

import anyio

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half_open"]
Opening = Literal["opened", "reopened"]


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 8,
        cooldown_s: float = 5.0,
        *,
        cooldown_factor: float = 1.0,
        max_cooldown_s: float = 60.0,
        max_openings: int | None = None,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"CircuitBreaker: failure_threshold must be an integer >= 1, got {failure_threshold!r}")
        if not cooldown_s >= 0 or math.isinf(cooldown_s):
            raise ValueError(f"CircuitBreaker: cooldown_s must be a finite number >= 0, got {cooldown_s!r}")
        if not cooldown_factor >= 1.0:
            raise ValueError(f"CircuitBreaker: cooldown_factor must be >= 1, got {cooldown_factor!r}")
        if not max_cooldown_s >= cooldown_s:
            raise ValueError(f"CircuitBreaker: max_cooldown_s must be >= cooldown_s ({cooldown_s!r}), got {max_cooldown_s!r}")
        if max_openings is not None and max_openings < 1:
            raise ValueError(f"CircuitBreaker: max_openings must be >= 1, got {max_openings!r}")
        self.failure_threshold = failure_threshold
        self.max_openings = max_openings
        self.cooldown_s = float(cooldown_s)
        self.cooldown_factor = float(cooldown_factor)
        self.max_cooldown_s = float(max_cooldown_s)
        self._state: State = "closed"
        self._consecutive = 0
        self._opened_count = 0
        self._cooldown = self.cooldown_s
        self._open_until = 0.0
        self._probe_deadline = 0.0
        self._changed: anyio.Event | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def opened_count(self) -> int:
        """How many times the breaker opened (re-opening after a failed probe counts)."""
        return self._opened_count

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def current_cooldown_s(self) -> float:
        return self._cooldown

    async def wait_ready(self) -> None:
        """Return when a request may be sent: at once when closed; as the probe when half-open."""
        while self._state != "closed":
            now = anyio.current_time()
            if self._state == "open":
                if now >= self._open_until:
                    self._become_probe(now)
                    return
                deadline = self._open_until
            else:  # half_open: a probe is out
                if now >= self._probe_deadline:
                    self._become_probe(now)  # the previous probe never reported
                    return
                deadline = self._probe_deadline
            if self._changed is None:
                self._changed = anyio.Event()
            changed = self._changed
            with anyio.move_on_after(deadline - now):
                await changed.wait()

    def _become_probe(self, now: float) -> None:
        self._state = "half_open"
        self._probe_deadline = now + self._cooldown

    def record_success(self) -> bool:
        """A request succeeded: reset the failure count; a successful probe closes the breaker.
        True when this success closed it (the caller tells the user the pauses are over).

        Successes reported while open (requests sent before it opened) do not cut the cooldown short."""
        if self._state == "open":
            return False
        self._consecutive = 0
        if self._state == "half_open":
            self._state = "closed"
            self._cooldown = self.cooldown_s
            self._notify()
            return True
        return False

    def record_failure(self) -> Opening | None:
        """A request failed: open after `failure_threshold` in a row; a failed probe re-opens.
        Says when this failure opened it ("opened", or "reopened" after a failed probe): everyone
        now waits `current_cooldown_s`, which the caller must make visible - a run that sits still
        for minutes otherwise looks hung."""
        if self._state == "open":
            return None  # late reports from requests sent before it opened
        self._consecutive += 1
        if self._state == "half_open":
            self._cooldown = min(self.max_cooldown_s, self._cooldown * self.cooldown_factor)
            self._open()
            return "reopened"
        if self._consecutive >= self.failure_threshold:
            self._open()
            return "opened"
        return None

    @property
    def exhausted(self) -> bool:
        """It opened `max_openings` times: it stays open, and no probe goes out again."""
        return self.max_openings is not None and self._opened_count >= self.max_openings

    def _open(self) -> None:
        self._state = "open"
        self._opened_count += 1
        self._open_until = math.inf if self.exhausted else anyio.current_time() + self._cooldown
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self._state!r}, consecutive={self._consecutive}, "
            f"opened_count={self._opened_count}, cooldown_s={self._cooldown})"
        )
