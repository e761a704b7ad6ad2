"""One model endpoint: its pacing and failure parts together, and how they react to an outcome.

The dispatcher records what happened to an attempt; what the endpoint makes of it (a 429 pauses
or narrows sending, a 5xx counts toward the circuit breaker, a success widens concurrency and
settles the token estimate) is decided here, in one place, from the provider's answer alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import FailureKind, TeacherError
from .breaker import CircuitBreaker
from .concurrency import AdaptiveConcurrency
from .headers import RateLimitInfo
from .limiter import RateLimiter
from .retry import RetryPolicy
from .shaper import SendShaper

if TYPE_CHECKING:  # pragma: no cover
    from ..api import Teacher
    from ..ledger.pricing import ModelPrice

__all__ = ["Endpoint", "pacing_hint"]


@dataclass
class Endpoint:
    """A model serving one or more roles, with its own pacing and failure handling."""

    teacher: "Teacher"
    model: str
    params: dict[str, Any]
    limiter: RateLimiter
    concurrency: AdaptiveConcurrency
    breaker: CircuitBreaker
    retry: RetryPolicy
    price: "ModelPrice | None"
    timeout_s: float
    max_breaker_trips: int = 6
    shaper: SendShaper | None = None  # exact send spacing under a request-rate limit

    def rate_limited_cap(self) -> int:
        """429s say "later", not "broken": they do not use up `max_attempts`, but a provider that
        only ever answers 429 must still end the query some time."""
        return max(20, 4 * self.retry.max_attempts)

    def on_success(self, est: int, used_tokens: int, rate_limits: RateLimitInfo | None) -> None:
        self.limiter.settle(est, used_tokens)
        if rate_limits is not None:
            self.limiter.update_from_headers(pacing_hint(rate_limits, est, self.limiter))
        self.breaker.record_success()
        self.concurrency.on_success()

    def on_failure(self, err: TeacherError, est: int) -> None:
        """The 429/5xx policy: how pacing, concurrency and the breaker react to a failed attempt."""
        if err.kind is not FailureKind.RATE_LIMITED:
            self.breaker.record_failure()
            return
        rpm = self.limiter.current_rpm
        if err.retry_after and (rpm is None or err.retry_after > 60.0 / rpm):
            # Hold everyone back. A wait shorter than one paced interval is left to this
            # request's own retry: pausing the limiter for it would restart its schedule, and
            # the catch-up after a restart is itself the next 429 one window later.
            self.limiter.pause_for(err.retry_after)
        if self.limiter.current_rpm is None and self.limiter.current_tpm is None:
            # Unknown capacity: fewer in flight is the only lever. With a configured rate the
            # limiter already paces, and halving concurrency would only starve a slow provider.
            self.concurrency.on_rate_limited()
        if err.rate_limits is not None:
            self.limiter.update_from_headers(pacing_hint(err.rate_limits, est, self.limiter))
        if not err.maybe_billed:
            self.limiter.settle(est, 0)


def pacing_hint(info: RateLimitInfo | None, tokens_estimate: int, limiter: RateLimiter) -> RateLimitInfo | None:
    """What of a provider's `x-ratelimit-*` headers the limiter may act on.

    Announced limits are left out: providers mean "per minute", but some (and gateways with short
    windows) announce a per-window count, and adopting that as RPM would throttle a run 60-fold.
    Configured limits plus the 429 feedback (retry-after, AIMD) pace correctly either way. A
    "none remaining" is kept only for a dimension the limiter does not pace (a paced run hits zero
    remaining at every full window, by design), with its pause cut to about one slot's worth: the
    reset header is the time until the *whole* window refills."""
    if info is None:
        return None
    out = RateLimitInfo()
    if (limiter.current_rpm is None and info.remaining_requests is not None and info.remaining_requests <= 0
            and info.reset_requests_s):
        out.remaining_requests = 0
        out.reset_requests_s = info.reset_requests_s / max(1, info.limit_requests or 1)
    if (limiter.current_tpm is None and info.remaining_tokens is not None and info.remaining_tokens <= 0
            and info.reset_tokens_s):
        share = min(1.0, tokens_estimate / info.limit_tokens) if info.limit_tokens else 1.0
        out.remaining_tokens = 0
        out.reset_tokens_s = info.reset_tokens_s * share
    if out.remaining_requests is None and out.remaining_tokens is None:
        return None
    return out
