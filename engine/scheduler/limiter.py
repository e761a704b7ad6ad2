"""Pace requests and tokens so a provider's limits are used almost fully without tripping 429s.

Providers often enforce "N per minute" over a sliding window much shorter than a minute (6000 RPM
can mean "at most 100 in any second"). Releasing a minute's capacity in a burst would then be
rejected, so this limiter *paces* (GCRA, the leaky bucket as a meter): one request every
60 / (RPM * safety) seconds, and tokens at TPM * safety per minute.

Burst is bounded twice: `burst_s` (default 0) is the burst the caller deliberately allows, and a
"wake-up jitter" allowance lets a release that happens a little late (timer rounding, a busy event
loop) keep its place on the schedule instead of losing that time for good. That allowance is what
a 1-second window has to spare at the chosen safety, (1 - safety) / safety * 1 s, less a fifth for
the wire's own jitter, and never more than 10 ms: 10 ms at the default 0.985, 4 ms at 0.995. So
catching up can never put more than the provider's limit into any 1-second window, whatever the
safety. After an idle spell at most one extra request (at <= 6000 RPM) goes out at once.

A provider's 429 while pacing is answered by `push_back` (one interval of slack for its window)
and, when they persist, a slightly lower `factor` (the share of the limit actually paced); see
`scheduler/ratepolicy.py`. Limits learned from a provider's headers arrive through `learn` (where
none is configured, or below a configured one), and a request rate inferred from its 429s (when
it announces none) through `pace_inferred`.

Tokens are charged when a request is released and corrected by `settle` once the real usage is
known, so the average token rate is right whatever was charged. A request's estimate is an upper
bound (the budget needs one); what is charged is what it will likely count, learned from the
replies so far (`likely_tokens.py`): charged at the bound, a run used 0.29 of a tokens-per-minute
limit. Three token limits, each counting its own share of a request (`Tokens`): a tokens-per-minute
limit (OpenAI's: the prompt and every completion's `max_tokens`), and Anthropic's separate input and
output limits (the output one is charged at `max_tokens` as a request starts and corrected to what
was written). Pacing prompt + `max_tokens` against an output limit alone would use a fraction of it.
Each token limit also holds its share of every second over the whole requests sent (a provider may
enforce a per-minute limit per second): see `token_window.py`.

All times are on the event loop's clock (`anyio.current_time()`).
"""

from __future__ import annotations

import math

import anyio

from .likely_tokens import LikelyTokens
from .token_window import WINDOW_S, TokenWindows
from .tokens import TOKEN_LIMITS, Tokens, as_tokens, counted, counts_of

__all__ = ["RateLimiter", "Tokens", "as_tokens", "counted"]

# Lateness we absorb without losing schedule time, at most; see the module docstring for the bound.
_JITTER_S = 0.010
_NEVER = -math.inf


def _check_limit(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"RateLimiter: {name} must be a positive finite number or None, got {value!r}")
    return float(value)


class RateLimiter:
    """Fair (FIFO) pacing of requests and tokens; `None` limits mean unlimited.

    Waiters queue on one FIFO lock; only the head of the queue sleeps (until its release time or
    until a refund could make it earlier), so many waiters cost no polling and no extra tasks.
    A cancelled waiter never took anything, so cancellation cannot leak capacity.
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        safety: float = 0.985,
        burst_s: float = 0.0,
        *,
        input_tokens_per_minute: float | None = None,
        output_tokens_per_minute: float | None = None,
    ) -> None:
        self._rpm = _check_limit("requests_per_minute", requests_per_minute)
        # Token limits per dimension (TOKEN_LIMITS), and what `forget_learned` returns them to.
        self._per_min: dict[str, float | None] = {
            "tokens": _check_limit("tokens_per_minute", tokens_per_minute),
            "input_tokens": _check_limit("input_tokens_per_minute", input_tokens_per_minute),
            "output_tokens": _check_limit("output_tokens_per_minute", output_tokens_per_minute)}
        self._configured_rpm, self._configured = self._rpm, dict(self._per_min)
        if not 0.0 < safety <= 1.0:
            raise ValueError(f"RateLimiter: safety must be in (0, 1], got {safety!r}")
        if not burst_s >= 0.0 or math.isinf(burst_s):
            raise ValueError(f"RateLimiter: burst_s must be a finite number >= 0, got {burst_s!r}")
        self._safety = float(safety)
        self._burst = float(burst_s)
        self._factor = 1.0
        self._catch_up = catch_up_allowance(self._safety)
        # Theoretical arrival times (GCRA): the earliest time the next release is on schedule.
        self._req_tat = _NEVER
        self._tat = {name: _NEVER for name in TOKEN_LIMITS}
        self._windows = TokenWindows(TOKEN_LIMITS)  # each token limit's one-second share (token_window.py)
        self._likely = LikelyTokens()  # what a request's estimate will likely count (likely_tokens.py)
        self._pause_until = _NEVER
        self._learned: set[str] = set()  # dimensions whose limit came from the provider's headers
        self._lock = anyio.Lock(fast_acquire=True)
        self._waiting = 0
        self._wake: anyio.Event | None = None

    # -- introspection -------------------------------------------------------------------------

    @property
    def current_rpm(self) -> float | None:
        """The provider's request limit in force (before `safety`), None when unlimited."""
        return self._rpm

    @property
    def current_tpm(self) -> float | None:
        """The provider's token limit in force (before `safety`), None when unlimited."""
        return self._per_min["tokens"]

    def token_limits(self) -> dict[str, float]:
        """The token limits in force, by dimension (TOKEN_LIMITS)."""
        return {name: v for name, v in self._per_min.items() if v is not None}

    @property
    def safety(self) -> float:
        return self._safety

    @property
    def factor(self) -> float:
        """The share of the limit paced on top of `safety` (below 1 after persistent 429s)."""
        return self._factor

    @property
    def interval_s(self) -> float | None:
        """Seconds between paced requests now, None when requests are not paced."""
        return None if self._rpm is None else 60.0 / (self._rpm * self._safety * self._factor)

    @property
    def paced(self) -> bool:
        """Whether any limit is in force (configured, learned or inferred): without one, nothing
        known sets the pace, and a 429 is answered by fewer in flight and the provider's wait."""
        return self._rpm is not None or any(v is not None for v in self._per_min.values())

    def interval_for(self, tokens: "int | Tokens") -> float | None:
        """Seconds between paced requests of `tokens` each: the request pace or a token pace,
        whichever is slowest; None when none is paced."""
        t = as_tokens(tokens)
        paces = [] if self.interval_s is None else [self.interval_s]
        paces += [n * self._seconds_per(name) for name, v in self._per_min.items()
                  if v is not None and (n := counted(name, t)) > 0]
        return max(paces) if paces else None

    @property
    def waiting(self) -> int:
        """Callers currently inside `acquire` and not yet released."""
        return self._waiting

    @property
    def paused_until(self) -> float | None:
        """Loop time before which nobody is released, or None if no pause was ever set."""
        return None if self._pause_until == _NEVER else self._pause_until

    # -- acquiring -----------------------------------------------------------------------------

    async def acquire(self, tokens_estimate: "int | Tokens" = 0) -> None:
        """Wait until both request and token pacing (and any pause) allow one more request."""
        estimate = as_tokens(tokens_estimate)
        if min(estimate.total, estimate.input, estimate.output) < 0:
            raise ValueError(f"RateLimiter.acquire: tokens_estimate must be >= 0, got {tokens_estimate!r}")
        if not self.paced and self._waiting == 0:
            # Unlimited fast path: no lock, no clock unless a pause was ever set.
            if self._pause_until == _NEVER or self._pause_until <= anyio.current_time():
                return
        self._waiting += 1
        try:
            async with self._lock:
                while True:
                    now = anyio.current_time()
                    at = self._earliest()
                    if self._tokens_paced:
                        admitted = self._likely.at_admission(estimate)
                        at = self._windows.room_at(counts_of(admitted), self._window_shares(), now, at)
                    if at <= now:
                        self._claim(estimate, now)
                        return
                    wake = self._wake = anyio.Event()
                    with anyio.move_on_after(at - now):
                        await wake.wait()
        finally:
            self._waiting -= 1

    def _earliest(self) -> float:
        at = self._pause_until
        if self._rpm is not None:
            at = max(at, self._req_tat - self._burst)
        for name, v in self._per_min.items():
            if v is not None:
                at = max(at, self._tat[name] - self._burst)
        return at

    @property
    def _tokens_paced(self) -> bool:
        return any(v is not None for v in self._per_min.values())

    def _window_shares(self) -> dict[str, float]:
        """Each paced token limit's share of one second, at the pace's factor. Not less the pace's
        safety: that keeps the average rate under the limit, and whole requests at it fill a second
        to the limit's share (20 of 100 tokens at 120,000 a minute), which the provider admits."""
        return {name: v * self._factor * WINDOW_S / 60.0 for name, v in self._per_min.items() if v is not None}

    def _claim(self, estimate: Tokens, now: float) -> None:
        """Release a request of `estimate`, charged what it will likely count (likely_tokens.py)."""
        tokens = estimate
        if self._tokens_paced:
            tokens = self._likely.likely(estimate)
            self._windows.add(counts_of(estimate), counts_of(self._likely.at_admission(estimate)),
                              self._window_shares(), now)
            self._likely.charged(estimate, tokens)
        floor = now - self._catch_up
        if self._rpm is not None:
            self._req_tat = max(self._req_tat, floor) + 60.0 / (self._rpm * self._safety * self._factor)
        for name, v in self._per_min.items():
            if v is not None:
                self._tat[name] = max(self._tat[name], floor) + counted(name, tokens) * self._seconds_per(name)

    def _seconds_per(self, name: str) -> float:
        per_min = self._per_min[name]
        assert per_min is not None
        return 60.0 / (per_min * self._safety * self._factor)

    def _notify(self) -> None:
        """Wake the head waiter so it recomputes its release time (it may now be earlier)."""
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    # -- corrections ---------------------------------------------------------------------------

    def settle(self, estimated: "int | Tokens", actual: "int | Tokens") -> None:
        """Correct the token accounts once real usage is known: refund or charge the difference."""
        est, act = as_tokens(estimated), as_tokens(actual)
        if min(est.total, est.input, est.output, act.total, act.input, act.output) < 0:
            raise ValueError(f"RateLimiter.settle: token counts must be >= 0, got estimated={estimated!r}, actual={actual!r}")
        if not self._tokens_paced:  # (nothing to count, on every query of such a run)
            return
        answered = act.total > 0 or act.input > 0 or act.output > 0  # (all 0: refused)
        charged = self._likely.settle(est, act if answered else None)
        refunded = False
        for name, v in self._per_min.items():
            if v is None:
                continue
            actual, was = counted(name, act), counted(name, charged)
            if actual != was:
                self._tat[name] += (actual - was) * self._seconds_per(name)
                refunded = refunded or actual < was
            refunded = self._windows.settle(name, counted(name, est), actual) or refunded
        if refunded:
            self._notify()

    def sent(self, tokens: "int | Tokens") -> None:
        """A released request is on the wire now: the provider's window counts it from here."""
        if self._tokens_paced:
            self._windows.sent(counts_of(as_tokens(tokens)), anyio.current_time())

    def pause_until(self, t: float) -> None:
        """Release nobody before loop time `t` (an existing longer pause is kept)."""
        if t > self._pause_until:
            self._pause_until = t

    def pause_for(self, seconds: float) -> None:
        """Release nobody for `seconds` from now (e.g. a provider's retry-after)."""
        if seconds > 0:
            self.pause_until(anyio.current_time() + seconds)

    def push_back(self, seconds: float) -> None:
        """Move the request schedule `seconds` later: the slot a rejected request used is lost,
        and its retry must not make the next window denser than the one that refused it."""
        if seconds > 0 and self._rpm is not None:
            self._req_tat = max(self._req_tat, anyio.current_time() - self._catch_up) + seconds

    def set_factor(self, factor: float) -> None:
        """Pace at `factor` of the limit (times `safety`); 0 < factor <= 1."""
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"RateLimiter: factor must be in (0, 1], got {factor!r}")
        self._factor = float(factor)

    def learn(self, requests_per_minute: float | None, tokens_per_minute: float | None, *,
              input_tokens_per_minute: float | None = None,
              output_tokens_per_minute: float | None = None) -> dict[str, tuple[float | None, float]]:
        """Adopt limits a provider announced: for a dimension with none, and below a configured
        limit - the provider enforces what it announces, so pacing a higher configured figure only
        buys 429s. A configured limit under the announced one stays (the user may share the quota
        with other clients). Each dimension learns once. Returns, for each dimension that changed,
        (the limit it replaced: None or the configured one, the new limit)."""
        changed: dict[str, tuple[float | None, float]] = {}
        for name, announced in (("requests", requests_per_minute), ("tokens", tokens_per_minute),
                                ("input_tokens", input_tokens_per_minute),
                                ("output_tokens", output_tokens_per_minute)):
            current = self._rpm if name == "requests" else self._per_min[name]
            if not announced or name in self._learned or (current is not None and announced >= current):
                continue
            value = _check_limit(f"{name}_per_minute", float(announced))
            if name == "requests":
                self._rpm = value
            else:
                self._per_min[name] = value
            self._learned.add(name)
            changed[name] = (current, value)  # type: ignore[assignment]
        return changed

    def pace_inferred(self, requests_per_minute: float) -> None:
        """Pace requests at a rate estimated from what the provider accepted (none configured or
        announced); called again as the estimate moves, and dropped by `forget_learned`."""
        if self._rpm is not None and "requests" not in self._learned:
            raise ValueError("RateLimiter.pace_inferred: a configured request limit is never replaced")
        self._rpm = _check_limit("requests_per_minute", float(requests_per_minute))
        self._learned.add("requests")
        self._notify()

    def forget_learned(self) -> list[str]:
        """Stop pacing to the limits `learn` adopted: back to the configured ones (or none); returns
        the dimensions' names."""
        gone = sorted(self._learned)
        if "requests" in self._learned:
            self._rpm = self._configured_rpm
            if self._rpm is None:
                self._req_tat = _NEVER
        for name in TOKEN_LIMITS:
            if name in self._learned:
                self._per_min[name] = self._configured[name]
                if self._per_min[name] is None:
                    self._tat[name] = _NEVER
        self._learned.clear()
        self._notify()
        return gone

    def __repr__(self) -> str:
        return (
            f"RateLimiter(rpm={self._rpm}, tokens={self.token_limits()}, safety={self._safety}, factor={self._factor}, "
            f"burst_s={self._burst}, waiting={self._waiting})"
        )


def catch_up_allowance(safety: float, window_s: float = 1.0) -> float:
    """How late a release may be and keep its slot without overfilling a `window_s` window:
    four fifths of the slack that pacing at `safety` leaves in it, at most 10 ms."""
    return min(_JITTER_S, 0.8 * (1.0 - safety) / safety * window_s)
