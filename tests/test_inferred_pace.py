"""A provider that announces no limit (no rate headers, nothing configured): the pace inferred from
its 429s (scheduler/inferred.py through scheduler/ratepolicy.py), closed-loop against a simulated
provider with an exact sliding window, on a fake clock.

The simulated sender sends as fast as it is let: a burst (slow start's) until a pace exists, then
one request per `limiter.interval_s`. A 429 comes back 5 ms after its send (providers refuse at
once), an answer after 200 ms. What must hold: the first short-wait 429 sets a pace, the provider's
limit is then used almost fully with few 429s, and a long wait (a per-minute quota) sets none."""

from __future__ import annotations

import heapq
import random
import re
from collections import deque

import pytest

from synthledger.engine.scheduler import AdaptiveConcurrency, RateLimiter
from synthledger.engine.scheduler.inferred import AcceptedRate
from synthledger.engine.scheduler.ratepolicy import RatePolicy


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Provider:
    """An exact sliding window on arrival times: at most `limit` accepted in any `window_s`; a
    refusal's wait is the time until the oldest accepted request leaves the window, sent as whole
    seconds (ceil). A request arrives 0-4 ms after the sender stamped it (its client's own delays),
    so the sender's clock and the window's see the edges apart, as with a real provider."""

    def __init__(self, limit: int, window_s: float = 1.0) -> None:
        self.limit, self.window_s = limit, window_s
        self.accepted: deque[float] = deque()
        self.log: list[tuple[float, bool]] = []
        self.rng = random.Random(5)

    def admit(self, sent: float) -> tuple[bool, float]:
        t = sent + self.rng.uniform(0.0, 0.004)
        while self.accepted and self.accepted[0] <= t - self.window_s:
            self.accepted.popleft()
        ok = len(self.accepted) < self.limit
        if ok:
            self.accepted.append(t)
        self.log.append((t, ok))
        wait = self.accepted[0] + self.window_s - t if not ok else 0.0
        return ok, float(max(1, -(-wait // 1)))


def simulate(limit: int, seconds: float, *, window_s: float = 1.0, burst_per_s: float = 300.0,
             raise_to: tuple[int, float] | None = None):
    """Run the loop for `seconds`; `raise_to` = (new limit, after how many seconds)."""
    clock = Clock()
    limiter = RateLimiter(None, None, safety=0.995)
    policy = RatePolicy(limiter, AdaptiveConcurrency(initial=8, maximum=256, clock=clock), clock=clock)
    provider = Provider(limit, window_s)
    outcomes: list[tuple[float, int, object]] = []  # (time, order, callback) of replies on the way
    notes, decisions, order = [], [], 0
    next_send, end = clock.t, clock.t + seconds
    while clock.t < end:
        interval = limiter.interval_s or 1.0 / burst_per_s
        t = next_send
        while outcomes and outcomes[0][0] <= t:  # replies that arrive before the next send
            at, _, reply = heapq.heappop(outcomes)
            clock.t = at
            reply()
        clock.t = t
        if raise_to is not None and t >= 100.0 + raise_to[1]:
            provider.limit = raise_to[0]
        policy.on_send(10)
        ok, wait = provider.admit(t)
        if ok:
            reply = lambda: notes.append(policy.on_success(None, 0.2, 10))  # noqa: E731
            heapq.heappush(outcomes, (t + 0.2, order, reply))
        else:
            def reply(wait: float = wait) -> None:
                d = policy.on_rate_limited(wait, False, None, 10, elapsed_s=0.005)
                decisions.append(d)
                notes.append(d.note)
            heapq.heappush(outcomes, (t + 0.005, order, reply))
        order += 1
        next_send = t + (limiter.interval_s or interval)
    return policy, provider, [n for n in notes if n], decisions


def steady(provider: Provider, since: float) -> tuple[float, float]:
    """(accepted per second, share refused) over the log from `since` on."""
    late = [(t, ok) for t, ok in provider.log if t >= since]
    span = late[-1][0] - late[0][0]
    return sum(ok for _, ok in late) / span, sum(not ok for _, ok in late) / len(late)


@pytest.mark.parametrize("limit", [100, 20])
async def test_a_short_wait_429_sets_a_pace_that_uses_the_limit_with_few_429s(limit):
    policy, provider, notes, _ = simulate(limit, 60.0)
    assert "pacing at" in notes[0] and "accepted in the second before its first 429" in notes[0]
    assert policy.inferred.active and policy.shaper is not None
    rate, refused = steady(provider, 105.0)
    assert rate >= 0.97 * limit, (rate, notes)
    assert refused <= 0.01, (refused, notes)
    assert policy.limiter.paused_until is None  # no global pause: each 429 cost its own slot


async def test_a_pace_above_what_the_provider_takes_comes_down_and_a_raised_limit_is_found():
    policy, provider, notes, _ = simulate(100, 20.0)
    policy.limiter.pace_inferred(150 * 60)  # an estimate far above what the provider takes
    clock = policy._clock  # noqa: SLF001 - the same fake clock drives the rest
    start = t = clock.t
    said = []
    while t < start + 5.0:
        policy.on_send(10)
        ok, wait = provider.admit(t)
        clock.t = t + 0.005
        if not ok:
            said.append(policy.on_rate_limited(wait, False, None, 10, elapsed_s=0.005).note)
        t += policy.limiter.interval_s
    said = [n for n in said if n]
    assert said and re.fullmatch(r"429s persist at 150 requests/s: pacing at (98|99|100)/s, one under .*", said[0])
    assert 98 * 60 <= policy.limiter.current_rpm <= 100 * 60 and len(said) <= 2
    # The send shaper's window rule follows the pace: at most the new rate's share of any second.
    assert policy.shaper.per_window == policy.limiter.current_rpm // 60
    assert policy.shaper.interval_s == pytest.approx(policy.limiter.interval_s)

    # The provider raises its limit by a fifth: quiet spells find it, 2% at a time.
    policy, provider, notes, _ = simulate(100, 300.0, raise_to=(120, 20.0))
    rate, refused = steady(provider, 300.0)
    assert rate >= 1.1 * 100 and refused <= 0.01, (rate, refused)
    assert policy.shaper.per_window == policy.limiter.current_rpm // 60 > 100  # its window rule moved up too


async def test_a_long_wait_is_a_used_up_quota_and_keeps_the_providers_clock():
    # 600 a minute over a 60 s window: the burst spends it, and the 429 says to wait most of a minute.
    policy, provider, notes, decisions = simulate(600, 5.0, window_s=60.0)
    assert not policy.inferred.active and policy.limiter.current_rpm is None
    assert decisions and all(d.retry_in is None and d.pause_s >= 1.0 for d in decisions)
    assert any("paused" in n for n in notes)
    # A minute on, the burst leaves the window a few requests at a time, and each 429 there asks
    # for a second or less: that is the edge of a long window, not a rate to pace.
    policy, provider, notes, decisions = simulate(600, 70.0, window_s=60.0)
    assert any(d.pause_s == 1.0 for d in decisions)
    assert not policy.inferred.active and not any("pacing at" in n for n in notes)


async def test_an_inferred_pace_is_dropped_when_the_provider_asks_for_a_long_wait():
    policy, provider, notes, _ = simulate(100, 3.0)
    assert policy.inferred.active
    policy._clock.t += 5.0  # noqa: SLF001
    d = policy.on_rate_limited(30.0, False, None, 10)
    assert "stopped pacing an inferred rate" in d.note and "30s wait" in d.note
    assert not policy.inferred.active and policy.limiter.current_rpm is None and policy.shaper is None
    assert d.pause_s == 30.0 and d.retry_in is None


async def test_headers_replace_an_inferred_pace():
    from synthledger.engine.scheduler.headers import RateLimitInfo

    policy, _, _, _ = simulate(100, 3.0)
    note = policy.on_success(RateLimitInfo(limit_requests=3000, remaining_requests=10), 0.2, 10)
    assert "learned the provider's limits" in note
    assert not policy.inferred.active and policy.limiter.current_rpm == 3000


def test_accepted_counts_sends_less_refusals_in_the_second_before():
    rate = AcceptedRate()
    for i in range(120):
        rate.sent(10.0 + i / 100)  # 100/s from t = 10.0
    for t in (10.5, 10.6, 11.0):
        rate.refused(t)
    assert rate.counts(11.1) == (100, 3)
    rate.sent(20.0)  # three seconds on: the old history is gone
    assert rate.counts(20.01) == (1, 0)


async def test_a_probe_at_a_small_rate_adds_a_whole_request_a_second():
    # The send shaper allows a whole number of sends a second: 2% of 20 a second would change nothing.
    policy, _, _, _ = simulate(20, 3.0)
    clock = policy._clock  # noqa: SLF001
    before = policy.limiter.current_rpm
    clock.t += 31.0
    policy.on_success(None, 0.02, 10)
    assert policy.limiter.current_rpm == (before // 60 + 1) * 60
    assert policy.shaper.per_window == before // 60 + 1
    policy.on_rate_limited(1.0, False, None, 10)  # the provider answers the probe: back where it was
    assert policy.limiter.current_rpm == before and policy.shaper.per_window == before // 60
