"""When to try a failed request again, and how long to wait first.

Exponential backoff with *full* jitter (a uniform draw in [0, cap]) spreads retries of many
requests that failed together, so they do not return as a synchronized wave. A provider's
`retry-after` is a floor, never shortened by jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from ..errors import FailureKind

__all__ = ["RetryPolicy"]

Jitter = Literal["full", "equal", "none"]


@dataclass(frozen=True)
class RetryPolicy:
    """`attempt` is 1-based: the number of the attempt that just failed."""

    max_attempts: int = 6
    base_s: float = 0.5
    max_s: float = 30.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"RetryPolicy: max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not self.base_s >= 0:
            raise ValueError(f"RetryPolicy: base_s must be >= 0, got {self.base_s!r}")
        if not self.max_s >= self.base_s:
            raise ValueError(f"RetryPolicy: max_s must be >= base_s ({self.base_s!r}), got {self.max_s!r}")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError(f"RetryPolicy: jitter must be 'full', 'equal' or 'none', got {self.jitter!r}")

    def should_retry(self, kind: FailureKind | str, attempt: int) -> bool:
        """Bad requests and auth failures fail the same way every time; the rest may be transient."""
        return FailureKind(kind).retryable and attempt < self.max_attempts

    def backoff_cap(self, attempt: int) -> float:
        """The largest backoff after failed attempt `attempt`: base * 2^(attempt-1), capped at max_s."""
        if attempt < 1:
            raise ValueError(f"RetryPolicy: attempt is 1-based, got {attempt!r}")
        # Cap the exponent so huge attempt numbers cannot overflow the float.
        return min(self.max_s, self.base_s * 2.0 ** min(attempt - 1, 64))

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after `attempt`; at least `retry_after` when given."""
        cap = self.backoff_cap(attempt)
        draw = (rng or random).random()
        if self.jitter == "full":
            wait = cap * draw
        elif self.jitter == "equal":
            wait = cap / 2 + cap / 2 * draw
        else:
            wait = cap
        if retry_after is not None and retry_after > wait:
            wait = float(retry_after)
        return wait
