"""What a request will probably count against an output-token limit, for the average pace.

Anthropic counts a request's `max_tokens` against its output limit when the request starts and
corrects the count to what was written when it ends. Pacing each release at `max_tokens` and
refunding the rest at the end loses that rest whenever the refund comes back after the next release
was due: the schedule cannot be moved into the past (that would be a burst), so the time already
waited is gone. At `max_tokens` 64, replies of ~31 tokens and 50 ms of latency, a run used
0.63-0.83 of a 1,000 tokens/s limit (tests/test_pacing_runs.py).

So the average pace charges what replies of this size have been writing (a running mean of
written / `max_tokens` for each `max_tokens`, so a strategy's short answers and its augmenter's long
questions are not averaged together; `max_tokens` itself until a reply of that size is known), and
the settlement corrects it to what was written: the average stays exact, and a reply longer than the
mean delays the next release instead. The per-second window (token_window.py) still counts
`max_tokens` until the reply ends, as the provider does, so no second is filled beyond its share.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["OutputPace"]

_WEIGHT = 0.1  # each new reply's weight in the running mean


class OutputPace:
    def __init__(self) -> None:
        self._ratio: dict[int, float] = {}  # written / max_tokens, a running mean by max_tokens
        self._charged: dict[int, deque[int]] = {}  # by the request's max_tokens, oldest first

    def charge(self, cap: int) -> int:
        """What the pace charges a request that may write `cap` tokens (recorded for `settle`)."""
        if cap <= 0:
            return cap
        ratio = self._ratio.get(cap)
        charged = cap if ratio is None else min(cap, max(1, math.ceil(cap * ratio)))
        self._charged.setdefault(cap, deque()).append(charged)
        return charged

    def settle(self, cap: int, written: int | None) -> int:
        """What was charged for the oldest unsettled request of `cap`; learns from `written`
        (None: refused, nothing was written and nothing says what would have been)."""
        if written is not None and cap > 0:
            ratio, mean = min(1.0, written / cap), self._ratio.get(cap)
            self._ratio[cap] = ratio if mean is None else (1 - _WEIGHT) * mean + _WEIGHT * ratio
        charged = self._charged.get(cap)
        if not charged:
            return cap
        value = charged.popleft()
        if not charged:
            del self._charged[cap]
        return value
