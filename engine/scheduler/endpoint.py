"""One model endpoint: its pacing and failure parts together, and how they react to an outcome.

The dispatcher records what happened to an attempt; what the endpoint makes of it (a 429 costs
one slot, or pauses when our pacing cannot explain it; a 5xx counts toward the circuit breaker; a
success widens concurrency, teaches limits and settles the token estimate) is decided here, in
one place, from the provider's answer alone - the 429 policy itself is scheduler/ratepolicy.py.

The breaker's pauses are said here too, as pacing notes: while it is open nothing is sent for up to
a minute at a time, and a run that sits still with no word of why (or of when it tries again)
looks hung. Its opening carries the pause's length, so the live view can count it down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import FailureKind, TeacherError
from .breaker import CircuitBreaker
from .concurrency import AdaptiveConcurrency
from .headers import RateLimitInfo
from .limiter import RateLimiter, Tokens
from .ratepolicy import RateDecision, RatePolicy
from .retry import RetryPolicy
from .shaper import SendShaper

if TYPE_CHECKING:  # pragma: no cover
    from ..api import Teacher
    from ..ledger.pricing import ModelPrice

__all__ = ["Endpoint"]


# A retry after timeouts waits at most this many times `[teacher] timeout_s` (60 s: 120, then 240).
TIMEOUT_GROWTH = 4


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
    rate: RatePolicy = None  # type: ignore[assignment]  # 429s, learned limits, Little's law
    batch: Any = None  # a run.batching.BatchQueue with `[teacher] batch = true`: queries go out in batches
    supports_n: bool = False  # k samples of a prompt in one request (cleared if the provider ignores n)
    max_n: int | None = None  # at most this many in one request (halved when n made one too large)
    last_note: str | None = None  # the last pacing change, for the live view
    section: str = "teacher"  # the config section that describes this endpoint (for messages)
    who: str = "teacher"  # how a one-line error names its teacher plugin ("teacher 'x' (plugin p from d 1.0)")
    answered: int = 0  # replies received this session: a refused connect before the first is a config error
    # Replies in a row that were not chat completions (a 200 we cannot read), with no good one in
    # between: a web page or a broken proxy where the API should be. Each may have been billed, so
    # at `max_malformed_in_a_row` the run stops instead of spending its budget on them.
    malformed_in_a_row: int = 0
    max_malformed_in_a_row: int = 5
    # Requests in a row refused as bad requests (a 400, or another 4xx no retry mends) with no answer
    # in between: every request is wrong the same way (a parameter the server refuses, a proxy that
    # rewrites them), so at `max_bad_requests_in_a_row` the run stops rather than fail every item.
    bad_requests_in_a_row: int = 0
    max_bad_requests_in_a_row: int = 5
    slow_said: bool = False  # the first timeout on this endpoint was told the user (a run warning)

    def timeout_after(self, timeouts: int) -> float:
        """The time limit for a query's attempt after `timeouts` of its attempts timed out: doubled
        each time, at most TIMEOUT_GROWTH times the configured one. A timed-out attempt may be billed;
        waiting the same time again would only pay for another."""
        return self.timeout_s * min(2 ** timeouts, TIMEOUT_GROWTH)

    @property
    def longest_timeout(self) -> float:
        """The most a retry after timeouts waits (what the slow-teacher warning tells the user)."""
        return self.timeout_s * TIMEOUT_GROWTH

    def __post_init__(self) -> None:
        if self.rate is None:
            self.rate = RatePolicy(self.limiter, self.concurrency, self.shaper)
        if self.breaker.max_openings is None:  # its last opening stops the run: no probe after it
            self.breaker.max_openings = self.max_breaker_trips
        self.supports_n = bool(getattr(self.teacher, "supports_n", False))

    def rate_limited_cap(self) -> int:
        """429s say "later", not "broken": they do not use up `max_attempts`, but a provider that
        only ever answers 429 must still end the query some time."""
        return max(20, 4 * self.retry.max_attempts)

    def on_sent(self, est: Tokens) -> None:
        self.limiter.sent(est)
        self.rate.on_send(est)

    def on_success(self, est: Tokens, counted_tokens: Tokens, rate_limits: RateLimitInfo | None,
                   latency_s: float) -> str | None:
        """Settle the token estimate to what the provider counted; learn, size and recover the
        pace. Returns a pacing change worth recording, if any."""
        self.limiter.settle(est, counted_tokens)
        note = self.rate.on_success(rate_limits, latency_s, counted_tokens)  # (what a request takes, as counted)
        if self.breaker.record_success():
            said = (f"{self.section} answers again after {self.breaker.opened_count} "
                    f"pause{'s' if self.breaker.opened_count > 1 else ''}: sending resumed")
            note = f"{said}; {note}" if note else said
        self.concurrency.on_success()
        self.malformed_in_a_row = self.bad_requests_in_a_row = 0
        return note

    def on_failure(self, err: TeacherError, est: Tokens, elapsed_s: float = 0.0) -> RateDecision | None:
        """The 429/5xx policy: a 429 goes to the rate policy (which sets `err.requeue_in`), any
        other failure counts toward the breaker (but a request too large for the token limit, or
        one refused as a bad request, says nothing of the provider's health - it answered - and
        pausing everyone for it would mend nothing; the provider counted none of a too-large one's
        tokens). The breaker's opening comes back as a decision too: its pause, to be recorded."""
        if err.kind is FailureKind.MALFORMED:
            self.malformed_in_a_row += 1
        if err.kind is FailureKind.BAD_REQUEST:
            self.bad_requests_in_a_row += 1
            return None
        if err.kind is FailureKind.TOO_LARGE:
            self.limiter.settle(est, 0)
            return None
        if err.kind is not FailureKind.RATE_LIMITED:
            opening = self.breaker.record_failure()
            return self._breaker_opened(opening == "reopened", err) if opening else None
        decision = self.rate.on_rate_limited(err.retry_after, err.retry_after_exact, err.rate_limits, est, elapsed_s)
        err.requeue_in = decision.retry_in
        if not err.maybe_billed:
            self.limiter.settle(est, 0)
        return decision

    def _breaker_opened(self, reopened: bool, err: TeacherError) -> RateDecision:
        """The note (and pause) for the breaker's opening: nothing goes out for its cooldown; at
        `max_breaker_trips` openings the run stops instead (run/retrying.py), and says so. The
        decision's `retry_in` is None: the failed request itself waits for the retry policy."""
        b = self.breaker
        if b.exhausted:  # (its last opening pauses nothing: it stops the run)
            return RateDecision(None, 0.0, f"{self.section} still failing ({err.kind.value}) after "
                                           f"{b.opened_count - 1} pauses: the run stops")
        wait = b.current_cooldown_s
        why = (f"its test request failed too ({err.kind.value})" if reopened
               else f"{b.consecutive_failures} failures in a row ({err.kind.value})")
        return RateDecision(None, wait, f"{self.section} paused {wait:g}s: {why}; pause {b.opened_count} "
                                        f"of at most {self.max_breaker_trips - 1}")
