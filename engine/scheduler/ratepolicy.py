"""What a 429, a rate-limit header or a response's latency changes in one endpoint's pacing.

A 429 while we pace a known rate is almost always a near miss: a send a few milliseconds early
for the provider's sliding window. Pausing every request for the whole-second `retry-after` that
OpenAI sends would throw away a second of slots (100 at 6000 RPM) to fix one. So here a 429 that
our own pacing explains costs one slot: that request alone waits for its next slot (or for the
exact `retry-after-ms` when a provider gives it; a whole-second `retry-after` is only an upper
bound), the schedule moves back one interval so the provider's window gets that slot of slack,
and if 429s persist - more than 2% of what we sent over the last 10 s, and at least 5 - the paced
share of the limit drops a little (2%, at most every 2 s, not below 70%) and recovers slowly (0.5%
per 5 quiet seconds). Near misses from a provider's clock jitter (about 1% of sends on a busy
machine) cost their slot and nothing more: slowing down for them would cost more slots than they do.

A 429 our pacing cannot explain (we sent well under the paced rate: another client shares the
key) pauses the whole endpoint, bounded by `max_pause_s` and reported as a note the dispatcher
records. With no limit known at all, a 429 whose wait is short (a second or less: a 1-second
window) sets a pace inferred from what the provider accepted before it (scheduler/inferred.py),
paced like a learned one; otherwise the old levers remain: halve concurrency, pause for the
provider's wait (recorded at most every 10 s, with the count since the last record).

A limit learned from headers is the provider's word, and the word can be in other units: Groq's
`x-ratelimit-limit-requests` counts requests per *day*, so read as per minute it sets a pace
hundreds of times too fast, which the provider then refuses while we send far below it. When such
429s come three times within 10 s, the learned limits are dropped for the rest of the run (and no
header is learned again): the provider's 429s and waits set the pace, as with no limit known.

Limits are learned from `x-ratelimit-limit-*` (and Anthropic's `anthropic-ratelimit-*`) where none
is configured, or where the configured one is higher than announced: both providers announce
per-minute figures, and a provider enforces its own - pacing a user's too-high figure would only
meet a storm of 429s our pacing cannot explain. A configured figure under the announced one stays. And with a known rate, concurrency is
raised to what that rate needs at the observed latency (Little's law), instead of growing into it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .concurrency import AdaptiveConcurrency
from .headers import RateLimitInfo
from .inferred import SETTLE_S, InferredPace
from .limiter import RateLimiter, Tokens, as_tokens, counted
from .shaper import SendShaper

__all__ = ["RateDecision", "RatePolicy"]

SLOWDOWN = 0.98  # the paced share after 429s persist...
MIN_FACTOR = 0.70  # ...never below this
RECOVERY = 0.005  # added back after each quiet spell
QUIET_S = 5.0  # a spell without 429s
PERSIST_S = 10.0  # 429s "persist" when, over this long,
PERSIST_SHARE = 0.02  # ...they are more than this share of what we sent
PERSIST_MIN = 5  # ...and at least this many
SLOW_EVERY_S = 2.0  # at most one slowdown this often
_BUCKET_S = 0.25
EXPLAINED = 0.7  # sending at >= this share of the paced rate: a 429 is our own near miss
LITTLE_MARGIN = 1.5  # in flight = rate x latency x margin (+2), for latency spread
DISTRUST_AFTER = 3  # 429s far below a learned pace, within PERSIST_S, that drop the learned limits


@dataclass
class RateDecision:
    """What one 429 means for its own request (`retry_in`: seconds before it queues for a slot
    again; None = the retry policy's backoff) and for the endpoint (`note`: worth recording)."""

    retry_in: float | None
    pause_s: float = 0.0
    note: str | None = None
    pauses: int | None = None  # the pauses the note stands for (None: this one, if it pauses)


def _own_wait(retry_after: float | None, exact: bool) -> float:
    """How long a refused request alone waits before it queues for its next slot: the provider's
    exact wait when it gave one (a whole-second `retry-after` is only an upper bound)."""
    return retry_after if exact and retry_after else 0.0


class RatePolicy:
    def __init__(self, limiter: RateLimiter, concurrency: AdaptiveConcurrency, shaper: SendShaper | None = None,
                 *, max_pause_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = limiter
        self.concurrency = concurrency
        self.shaper = shaper
        self.max_pause_s = max_pause_s
        self._clock = clock
        self._sends: deque[tuple[float, Tokens]] = deque()  # the last second's sends (time, tokens)
        self._first_send: float | None = None
        self._buckets: deque[list[int]] = deque()  # [bucket, sends, 429s] over the last PERSIST_S
        self._last_429 = -math.inf
        self._last_change = -math.inf
        self._latency: float | None = None
        self.paused_until = -math.inf
        self.learned = False
        self.distrusted = False  # the learned limits were contradicted: headers teach nothing more
        self._unexplained: deque[float] = deque()  # when 429s came far below a learned pace
        self.overruled: str | None = None  # configured limits the provider announced lower, not yet said
        self._pauses_unsaid = 0  # pauses with no limit known since the last one recorded
        self._last_pause_note = -math.inf
        self.inferred = InferredPace(limiter)  # a request rate from the 429s of a provider that announces none

    # -- observations --------------------------------------------------------------------------

    def on_send(self, tokens: int | Tokens) -> None:
        now = self._clock()
        if self.inferred.watching:
            self.inferred.accepted.sent(now)
        if not self.limiter.paced:
            return  # nothing paced: our own rate explains nothing (the first learned limit starts it)
        if self._first_send is None:
            self._first_send = now
        self._sends.append((now, as_tokens(tokens)))
        while self._sends and self._sends[0][0] < now - 1.0:
            self._sends.popleft()
        self._bucket(now)[1] += 1

    def _bucket(self, now: float) -> list[int]:
        b = int(now / _BUCKET_S)
        if not self._buckets or self._buckets[-1][0] != b:
            self._buckets.append([b, 0, 0])
            while self._buckets[0][0] <= b - PERSIST_S / _BUCKET_S:
                self._buckets.popleft()
        return self._buckets[-1]

    def on_success(self, info: RateLimitInfo | None, latency_s: float, tokens_estimate: int | Tokens) -> str | None:
        """Learn from headers, size concurrency to the rate, recover a lowered pace. Returns a note
        when the pacing changed in a way worth recording."""
        note = self._learn(info)
        self._hint(info, tokens_estimate)
        self._latency = latency_s if self._latency is None else 0.8 * self._latency + 0.2 * latency_s
        interval = self.limiter.interval_for(tokens_estimate)  # a token limit alone has a request pace too
        if interval is not None:
            self.concurrency.raise_to(math.ceil(self._latency / interval * LITTLE_MARGIN) + 2)
        now = self._clock()
        factor = self.limiter.factor
        if factor < 1.0 and now - self._last_429 >= QUIET_S and now - self._last_change >= QUIET_S:
            self._set_factor(min(1.0, factor + RECOVERY), now)
            if self.limiter.factor >= 1.0:
                note = note or "pace recovered to the full limit"
        elif self.inferred.active and factor >= 1.0 and self.inferred.probe(now, self._last_429):
            self._paced_changed()
        return note

    def on_rate_limited(self, retry_after: float | None, exact: bool, info: RateLimitInfo | None,
                        tokens_estimate: int | Tokens, elapsed_s: float = 0.0) -> RateDecision:
        """`elapsed_s`: how long ago the refused request went out."""
        now = self._clock()
        sent_at = now - elapsed_s
        if self.inferred.watching:
            self.inferred.accepted.refused(sent_at)
        learned = self._learn(info)
        self._last_429 = now
        lim = self.limiter
        if not lim.paced:
            inferred = self.inferred.start(now, retry_after, sent_at)
            if inferred is not None:
                self._paced_changed()
                return self._lost_slot(retry_after, exact, inferred)
            return self._nothing_known(now, retry_after)
        if self.inferred.active and sent_at < self.inferred.since + SETTLE_S:
            # Sent before the inferred pace could show in the provider's window (it still held the
            # burst that found the limit): one lost slot, and nothing said about the pace.
            return self._lost_slot(retry_after, exact)
        self._bucket(now)[2] += 1
        if self.inferred.active:
            decision = self._inferred_429(now, retry_after, exact, sent_at)
            if decision is not None:
                return decision
        share = None if self.inferred.active else self._sending_share(now)  # (an inferred pace: `_inferred_429`)
        if share is not None and share < EXPLAINED and not learned:
            wait = min(self.max_pause_s, retry_after or self._reset_hint(info) or 1.0)
            dropped = self._distrust(now, share) if self.learned else None
            lim.pause_for(wait)
            self.paused_until = now + wait
            why = ("is the key shared with another client, or do its headers count something else, such as "
                   "requests per day?" if self.learned else "is the key shared with another client?")
            return RateDecision(wait, wait, dropped or f"paused {wait:g}s: 429 while sending at {share:.0%} of "
                                                       f"the paced rate ({why})")
        if lim.interval_s is not None:
            lim.push_back(lim.interval_s)
        note = learned
        sent = sum(b[1] for b in self._buckets)
        limited = sum(b[2] for b in self._buckets)
        if (limited >= PERSIST_MIN and limited > PERSIST_SHARE * sent and now - self._last_change >= SLOW_EVERY_S
                and lim.factor > MIN_FACTOR):
            self._set_factor(max(MIN_FACTOR, lim.factor * SLOWDOWN), now)
            note = note or (f"429s persist ({limited} of {sent} sent in {PERSIST_S:g}s): pacing at "
                            f"{lim.factor:.0%} of the limit")
        return RateDecision(_own_wait(retry_after, exact), 0.0, note)

    # -- internals -----------------------------------------------------------------------------

    def _sending_share(self, now: float) -> float | None:
        """Our send rate over the last second as a share of the paced rate (None: too early)."""
        if self._first_send is None:
            return None
        span = min(1.0, now - self._first_send)
        if span < 0.05:
            return None
        lim = self.limiter
        shares = []
        if lim.interval_s is not None:
            shares.append(len(self._sends) / span * lim.interval_s)
        for name, per_min in lim.token_limits().items():
            paced = per_min * lim.safety * lim.factor / 60.0
            shares.append(sum(counted(name, t) for _, t in self._sends) / span / paced)
        return max(shares) if shares else None

    def _inferred_429(self, now: float, retry_after: float | None, exact: bool,
                      sent_at: float) -> RateDecision | None:
        """A 429 while pacing an inferred rate: the pace may have moved or been dropped (see
        `InferredPace.on_429`); None when it is an ordinary near miss for the paced path."""
        note = self.inferred.on_429(now, retry_after, sent_at)
        self._paced_changed()  # (also when a probe this 429 answered was undone, without a note)
        if note is None:
            return None
        if not self.inferred.active:  # dropped: back to the provider's own clock
            return self._nothing_known(now, retry_after, note)
        return self._lost_slot(retry_after, exact, note)

    def _lost_slot(self, retry_after: float | None, exact: bool, note: str | None = None) -> RateDecision:
        """One lost slot: the schedule moves back an interval, and only the refused request waits."""
        if self.limiter.interval_s is not None:
            self.limiter.push_back(self.limiter.interval_s)
        return RateDecision(_own_wait(retry_after, exact), 0.0, note)

    def _nothing_known(self, now: float, retry_after: float | None, note: str | None = None) -> RateDecision:
        """Fewer in flight is the only lever, the provider's wait the only clock."""
        self.concurrency.on_rate_limited()
        wait = min(self.max_pause_s, retry_after or 0.0)
        if wait <= 0.01:
            return RateDecision(None, wait, note)
        self.limiter.pause_for(wait)
        if note is not None:
            return RateDecision(None, wait, note)
        said, pauses = self._pause_note(now, wait)
        return RateDecision(None, wait, said, pauses)

    def _paced_changed(self) -> None:
        """The request pace was inferred, moved or dropped: the send shaper follows it."""
        lim = self.limiter
        if lim.interval_s is None:
            self.shaper, self._first_send = None, None
            self._sends.clear()
            if not lim.paced:
                self.concurrency.back_to_probing()
        else:
            if self.shaper is None:
                self.shaper = SendShaper(lim.current_rpm, lim.safety)  # type: ignore[arg-type]
            else:
                self.shaper.set_limit(lim.current_rpm)  # type: ignore[arg-type]
            self.shaper.set_interval(lim.interval_s)

    def _set_factor(self, factor: float, now: float) -> None:
        self.limiter.set_factor(factor)
        self._last_change = now
        if self.shaper is not None and self.limiter.interval_s is not None:
            self.shaper.set_interval(self.limiter.interval_s)

    def _pause_note(self, now: float, wait: float) -> tuple[str | None, int]:
        """A pause with no limit known is said at most once per PERSIST_S, with how many there were
        (and the event counts them all: `show` said 3 pauses of 24): a 429 storm is visible in the
        log and the live view without one more event per 429."""
        self._pauses_unsaid += 1
        if now - self._last_pause_note < PERSIST_S:
            return None, 0
        n, self._pauses_unsaid, self._last_pause_note = self._pauses_unsaid, 0, now
        return (f"paused {wait:g}s for the provider's retry-after ({n} pause{'s' if n > 1 else ''} since the last "
                "note): no limit is configured or announced, so its 429s set the pace"), n

    def take_unsaid_pauses(self) -> int:
        """The pauses no note has counted yet (said at the run's end)."""
        n, self._pauses_unsaid = self._pauses_unsaid, 0
        return n

    def _distrust(self, now: float, share: float) -> str | None:
        """Count a 429 far below a learned pace; at the third within PERSIST_S, drop the learned
        limits and say so."""
        seen = self._unexplained
        seen.append(now)
        while seen[0] < now - PERSIST_S:
            seen.popleft()
        if len(seen) < DISTRUST_AFTER:
            return None
        lim = self.limiter
        announced = {"requests": lim.current_rpm, **lim.token_limits()}
        figures = ", ".join(f"{announced[k]:g} {k}/min" for k in lim.forget_learned())
        self.learned, self.distrusted = False, True
        if lim.interval_s is None:
            self.shaper = None
        elif self.shaper is not None:  # back to a configured request limit
            self.shaper.set_limit(lim.current_rpm)  # type: ignore[arg-type]
            self.shaper.set_interval(lim.interval_s)
        if not lim.paced:
            self.concurrency.back_to_probing()
        self._first_send = None
        self._sends.clear()
        now_sets = ("the configured limits set the pace again"
                    if lim.paced else "its 429s and waits set the pace now")
        return (f"stopped pacing to the limits its headers announce ({figures}): it refused {len(seen)} "
                f"requests in {PERSIST_S:g}s while we sent at {share:.0%} of that pace, so the headers count "
                f"something else (Groq's count requests per day); {now_sets}")

    def _learn(self, info: RateLimitInfo | None) -> str | None:
        if self.distrusted or info is None or all(v is None for v in (
                info.limit_requests, info.limit_tokens, info.limit_input_tokens, info.limit_output_tokens)):
            return None
        if self.inferred.active:  # the provider's word replaces our estimate
            self.inferred.drop("the provider announced its limits")
        changed = self.limiter.learn(info.limit_requests, info.limit_tokens,
                                     input_tokens_per_minute=info.limit_input_tokens,
                                     output_tokens_per_minute=info.limit_output_tokens)
        if not changed:
            return None
        self.learned = True
        lim = self.limiter
        if lim.interval_s is not None:
            if self.shaper is None:
                self.shaper = SendShaper(lim.current_rpm, lim.safety)  # type: ignore[arg-type]
            else:
                self.shaper.set_limit(lim.current_rpm)  # type: ignore[arg-type]
            self.shaper.set_interval(lim.interval_s)
        learned = [f"{new:g} {k}/min" for k, (old, new) in changed.items() if old is None]
        lowered = [f"the provider announces {new:g} {k}/min, below the configured {old:g}; pacing to {new:g}"
                   for k, (old, new) in changed.items() if old is not None]
        if lowered:
            # The user's figure was wrong for this provider: said once as a warning too (they should
            # fix the config), besides the pacing note.
            self.overruled = "; ".join(lowered)
        return "; ".join(([f"learned the provider's limits from its headers: {', '.join(learned)}"] if learned
                          else []) + lowered)

    def take_overruled(self) -> str | None:
        """The configured limits the provider's announced ones overruled, once (None after)."""
        said, self.overruled = self.overruled, None
        return said

    @staticmethod
    def _reset_hint(info: RateLimitInfo | None) -> float | None:
        if info is None:
            return None
        waits = [r for left, r in ((info.remaining_requests, info.reset_requests_s),
                                   (info.remaining_tokens, info.reset_tokens_s)) if left == 0 and r]
        return max(waits) if waits else None

    def _hint(self, info: RateLimitInfo | None, tokens_estimate: int | Tokens) -> None:
        """"None remaining" for a dimension we do not pace: hold back about one slot's worth (the
        reset header is the time until the *whole* window refills, far longer than needed)."""
        if info is None:
            return
        lim = self.limiter
        if (lim.current_rpm is None and info.remaining_requests is not None and info.remaining_requests <= 0
                and info.reset_requests_s):
            lim.pause_for(info.reset_requests_s / max(1, info.limit_requests or 1))
        if (lim.current_tpm is None and info.remaining_tokens is not None and info.remaining_tokens <= 0
                and info.reset_tokens_s):
            share = min(1.0, as_tokens(tokens_estimate).total / info.limit_tokens) if info.limit_tokens else 1.0
            lim.pause_for(info.reset_tokens_s * share)
