"""A request rate for a provider that announces none, inferred from its 429s.

With no limit configured and no `x-ratelimit-*` headers, the provider's 429s are its only word on
its limit, and pausing everything for each one's whole-second `retry-after` (all that is left to
do without a rate) loses a second of slots per 429: about 0.6 of a 1-second-window limit. But at
its first 429 the provider's window is full, so what it accepted in the second before the refused
request went out *is* its limit per second. That is counted on our own clock (`AcceptedRate`):
a provider refuses at once, so a 429 comes back within milliseconds of its send, and what we sent
in a second less what came back refused is what it accepted.

From then on the endpoint paces that rate like a learned one (`InferredPace`): a 429 our pacing
explains costs one slot; when 429s come more often than near misses do (the estimate was high, or
the limit fell), the pace drops to what the provider's window held at the last one; after a long
quiet spell it tries 2% faster (one request a second at least), in case the limit was raised, and
goes back at the first 429.

Only a short wait is taken as a 1-second window. A `retry-after` over a second (a per-minute quota
used up) or none at all keeps the provider's own clock: pause for its wait, halve concurrency. A
wait over a second while an inferred pace runs drops the inference, as does a provider that
accepts almost nothing of it; and once a provider has asked for a wait over a second, nothing is
inferred again that run, because the short waits at the sliding edge of a long window (an old
burst leaving it) say nothing of the rate it allows.
"""

from __future__ import annotations

import math
from collections import deque

from .limiter import RateLimiter

__all__ = ["AcceptedRate", "InferredPace"]

HISTORY_S = 3.0  # sends and refusals kept: a two-second count behind a 429 that took up to 1 s
LOOK_BACK_S = 2.0  # how far back a 429 while pacing looks: a refusal a second catches the one before
SHORT_WAIT_S = 1.0  # a retry-after up to this says the window frees within a second
MIN_PER_S = 2.0  # below this the provider accepted too little to infer a rate from
NEAR_MISS = 0.005  # refusals up to this share of what we sent are jitter, not a pace too fast
SETTLE_S = 1.0  # a changed pace shows in the provider's one-second window after this long
PROBE_QUIET_S = 30.0  # this long without a 429: try a little faster...
PROBE_STEP = 0.02  # ...by this much, and by one request a second at least (the limit may have been raised)


class AcceptedRate:
    """Our sends and the 429s that came back, over the last HISTORY_S seconds."""

    def __init__(self) -> None:
        self._sent: deque[float] = deque()
        self._refused: deque[float] = deque()

    def sent(self, now: float) -> None:
        self._sent.append(now)
        _trim(self._sent, now)

    def refused(self, sent_at: float) -> None:
        self._refused.append(sent_at)
        _trim(self._refused, sent_at)

    def clear(self) -> None:
        self._sent.clear()
        self._refused.clear()

    def per_second(self, before: float) -> int:
        """What the provider's window held when it refused a request sent at `before`, as our clock
        sees it: what we sent in the second before, less what was refused."""
        sent, refused = self.counts(before)
        return max(0, sent - refused)

    def counts(self, before: float, seconds: float = 1.0) -> tuple[int, int]:
        """(sent, refused) in the `seconds` before loop time `before`."""
        start = before - seconds
        return (sum(1 for t in self._sent if start <= t < before),
                sum(1 for t in self._refused if start <= t < before))


def _trim(times: deque[float], now: float) -> None:
    while times and times[0] < now - HISTORY_S:
        times.popleft()


class InferredPace:
    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.accepted = AcceptedRate()
        self.active = False
        self.since = -math.inf  # when the inferred pace began
        self._changed = -math.inf
        self._before_probe: float | None = None  # the pace (per second) a probe left, until a 429 answers it
        self.long_window = False  # a wait over a second was asked for: the window is not a second

    @property
    def watching(self) -> bool:
        """Counting sends: an inferred pace runs, or no request limit is known to infer one."""
        return self.active or self.limiter.current_rpm is None

    def start(self, now: float, retry_after: float | None, sent_at: float) -> str | None:
        """A 429 with nothing known: pace what the provider accepted before it, if that says
        anything. Returns the note to record, None when nothing was inferred."""
        if retry_after is not None and retry_after > SHORT_WAIT_S:
            self.long_window = True  # (its sliding edge later gives short waits that say nothing of a rate)
        if retry_after is None or self.long_window:
            return None
        rate = self.accepted.per_second(sent_at)
        if rate < MIN_PER_S:
            return None
        self._set(rate, now)
        self.since = now
        return (f"no limit is configured or announced: pacing at {rate:g} requests/s, what the provider "
                "accepted in the second before its first 429")

    def on_429(self, now: float, retry_after: float | None, sent_at: float) -> str | None:
        """A 429 while pacing the inferred rate. A wait over a second means the window is not a
        second: the inference goes. Else, if the provider refused more than near misses of what we
        sent in the two seconds before it, pace what its window held. Returns a note when the pace
        moved or was dropped."""
        if retry_after is not None and retry_after > SHORT_WAIT_S:
            return self.drop(f"the provider asked for a {retry_after:g}s wait", long_window=True)
        rpm = self.limiter.current_rpm
        if rpm is not None and self._before_probe is not None:  # the probe found the limit where it was
            self._set(self._before_probe, now)
            return None
        look = min(LOOK_BACK_S, sent_at - self._changed)  # (what was sent at the pace now set)
        if rpm is None or look < SETTLE_S:
            return None
        sent, refused = self.accepted.counts(sent_at, look)
        if refused <= NEAR_MISS * sent:
            return None
        # The provider's window when it refused was full. Less one: we stamp a send before it
        # reaches the wire, a few milliseconds that vary, so a second on our clock can hold one
        # request more than the provider's window did (measured: 21 at a 20-a-second limit, at
        # every 429), and pacing that count would be refused once a second for good.
        rate = self.accepted.per_second(sent_at) - 1
        if rate * 60.0 >= rpm:
            return None
        if rate < MIN_PER_S:
            return self.drop(f"the provider accepted {rate:g} requests in the last second")
        self._set(rate, now)
        return (f"429s persist at {rpm / 60:.4g} requests/s: pacing at {rate:g}/s, one under what the provider's "
                "window held when it refused")

    def probe(self, now: float, last_429: float) -> bool:
        """After a long quiet spell, try a little faster (a limit can be raised); a 429 that
        answers it brings the pace back through `on_429`. True when the pace moved."""
        rpm = self.limiter.current_rpm
        if rpm is None or min(now - last_429, now - self._changed) < PROBE_QUIET_S:
            return False
        per_s = rpm / 60.0
        # At least one more a second: the send shaper holds a second to a whole number of sends.
        self._set(max(per_s * (1.0 + PROBE_STEP), math.floor(per_s) + 1.0), now)
        self._before_probe = per_s
        return True

    def drop(self, why: str, long_window: bool = False) -> str:
        self.long_window = self.long_window or long_window
        self.limiter.forget_learned()
        self.active = False
        self.accepted.clear()
        return f"stopped pacing an inferred rate ({why}): the provider's waits set the pace again"

    def _set(self, per_s: float, now: float) -> None:
        self._before_probe = None
        self.limiter.pace_inferred(per_s * 60.0)
        self.active = True
        self._changed = now
