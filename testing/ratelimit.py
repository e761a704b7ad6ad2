"""Sliding-window request and token limits for the test teacher server.

Real providers enforce limits over a rolling window and count a request's tokens as prompt plus
`max_tokens` at arrival. The window here is exact (a deque of accepted requests), so a test can
send more than the limit within one window and count precisely how many were refused.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass
class Decision:
    """Outcome of one admission check, plus what the `x-ratelimit-*` headers should say."""

    accepted: bool
    retry_after_s: float
    headers: dict[str, str]


def _fmt_reset(seconds: float) -> str:
    return f"{max(0.0, seconds):.3f}s"


class SlidingWindow:
    """Requests and tokens accepted in the last `window_s` seconds (None limit = unlimited)."""

    def __init__(self, rpm: float | None, tpm: float | None, window_s: float) -> None:
        self._events: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self.configure(rpm, tpm, window_s)

    def configure(self, rpm: float | None, tpm: float | None, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        # Per-window limits; at least one so that a tiny rpm still lets something through.
        self.request_limit = None if rpm is None else max(1, int(rpm * window_s / 60.0))
        self.token_limit = None if tpm is None else max(1, int(tpm * window_s / 60.0))

    @property
    def active(self) -> bool:
        return self.request_limit is not None or self.token_limit is not None

    def reset(self) -> None:
        self._events.clear()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        events = self._events
        while events and events[0][0] <= cutoff:
            self._tokens -= events.popleft()[1]

    def acquire(self, tokens: int, now: float) -> Decision:
        """Admit the request if both limits allow it; otherwise say when they will."""
        self._expire(now)
        events = self._events
        wait = 0.0
        if self.request_limit is not None and len(events) >= self.request_limit:
            # The oldest (len - limit + 1) entries must leave the window first.
            wait = events[len(events) - self.request_limit][0] + self.window_s - now
        if self.token_limit is not None and self._tokens + tokens > self.token_limit:
            need = self._tokens + tokens - self.token_limit
            freed = 0
            for t, k in events:
                freed += k
                if freed >= need:
                    wait = max(wait, t + self.window_s - now)
                    break
            else:  # cannot fit even in an empty window; the caller rejects such requests earlier
                wait = max(wait, self.window_s)
        accepted = wait <= 0.0
        if accepted:
            events.append((now, tokens))
            self._tokens += tokens
        return Decision(accepted, max(0.0, wait), self._headers(now))

    def _headers(self, now: float) -> dict[str, str]:
        h: dict[str, str] = {}
        events = self._events
        full_reset = (events[-1][0] + self.window_s - now) if events else 0.0
        if self.request_limit is not None:
            h["x-ratelimit-limit-requests"] = str(self.request_limit)
            h["x-ratelimit-remaining-requests"] = str(max(0, self.request_limit - len(events)))
            h["x-ratelimit-reset-requests"] = _fmt_reset(full_reset)
        if self.token_limit is not None:
            h["x-ratelimit-limit-tokens"] = str(self.token_limit)
            h["x-ratelimit-remaining-tokens"] = str(max(0, self.token_limit - self._tokens))
            h["x-ratelimit-reset-tokens"] = _fmt_reset(full_reset)
        return h


def retry_after_headers(seconds: float) -> dict[str, str]:
    """`retry-after` must be whole seconds (ceil, so obeying it always suffices); `-ms` is exact."""
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000.0))),
    }
