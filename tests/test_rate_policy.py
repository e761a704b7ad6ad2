"""The 429 policy, learned limits and Little's law (scheduler/ratepolicy.py), the limiter's safety
bound, and how a shared request's cost is split (samples.py) - each alone, on a fake clock."""

from __future__ import annotations

import random

import anyio
import pytest

from synthledger.engine.ledger.pricing import ModelPrice
from synthledger.engine.run.samples import output_split, shares, split_by_weight, split_evenly, worst_shares
from synthledger.engine.scheduler import AdaptiveConcurrency, RateLimiter
from synthledger.engine.scheduler.limiter import catch_up_allowance
from synthledger.engine.scheduler.ratepolicy import MIN_FACTOR, RatePolicy
from synthledger.engine.scheduler.shaper import SendShaper
from synthledger.engine.scheduler.headers import RateLimitInfo


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def policy(rpm: float | None = 6000, tpm: float | None = None, growth_cap: int | None = None, **kw):
    clock = Clock()
    limiter = RateLimiter(rpm, tpm, safety=0.99)
    conc = AdaptiveConcurrency(initial=8, maximum=256, clock=clock, growth_cap=growth_cap)
    shaper = SendShaper(rpm, 0.99) if rpm else None
    return RatePolicy(limiter, conc, shaper, clock=clock, **kw), clock


def send_at_rate(p: RatePolicy, clock: Clock, per_s: float, seconds: float = 1.0) -> None:
    for _ in range(int(per_s * seconds)):
        clock.t += 1.0 / per_s
        p.on_send(10)


async def test_a_429_at_our_paced_rate_costs_one_slot_not_a_pause():
    p, clock = policy()
    send_at_rate(p, clock, 99)
    interval = p.limiter.interval_s
    before = p.limiter._req_tat  # noqa: SLF001 - the schedule itself is what must move
    # OpenAI's unkind 429: only a whole-second retry-after, an upper bound.
    d = p.on_rate_limited(1.0, False, RateLimitInfo(limit_requests=6000, remaining_requests=0), 10)
    assert d.retry_in == 0.0 and d.pause_s == 0.0 and d.note is None
    assert p.limiter.paused_until is None  # nobody else waits
    assert p.limiter._req_tat >= max(before, anyio.current_time() - 0.01) + interval - 1e-9  # noqa: SLF001
    # The kind variant gives the exact wait: this request alone waits for it.
    d = p.on_rate_limited(0.004, True, None, 10)
    assert d.retry_in == pytest.approx(0.004) and d.pause_s == 0.0


async def test_persistent_429s_lower_the_pace_gently_and_it_recovers_slowly():
    p, clock = policy()
    send_at_rate(p, clock, 99, 8.0)
    for _ in range(10):
        d = p.on_rate_limited(1.0, False, None, 10)  # ~1% of ~800 sent: near misses
    assert p.limiter.factor == 1.0 and d.note is None  # they cost their slot and nothing more
    send_at_rate(p, clock, 99, 2.0)
    notes = [p.on_rate_limited(1.0, False, None, 10).note for _ in range(15)]  # now over 2%: they persist
    assert p.limiter.factor == pytest.approx(0.98) and "429s persist" in " ".join(n for n in notes if n)
    assert p.shaper.interval_s == pytest.approx(p.limiter.interval_s)  # the send spacing follows
    send_at_rate(p, clock, 99, 1.0)
    for _ in range(30):
        p.on_rate_limited(1.0, False, None, 10)
    assert p.limiter.factor == pytest.approx(0.98)  # at most one cut every 2 s
    for _ in range(60):
        send_at_rate(p, clock, 99, 2.0)  # still sending at the paced rate, 429s keep coming
        for _ in range(30):
            p.on_rate_limited(1.0, False, None, 10)
    assert p.limiter.factor == pytest.approx(MIN_FACTOR)  # never below the floor
    clock.t += 4.0
    p.on_success(None, 0.2, 10)
    assert p.limiter.factor == pytest.approx(MIN_FACTOR)  # not quiet long enough yet
    clock.t += 1.0
    p.on_success(None, 0.2, 10)
    assert p.limiter.factor == pytest.approx(MIN_FACTOR + 0.005)
    p.on_success(None, 0.2, 10)
    assert p.limiter.factor == pytest.approx(MIN_FACTOR + 0.005)  # one step per quiet spell
    notes = []
    for _ in range(80):
        clock.t += 5.0
        notes.append(p.on_success(None, 0.2, 10))
    assert p.limiter.factor == 1.0 and "recovered" in [n for n in notes if n][-1]


async def test_429s_we_did_not_cause_pause_everyone_bounded_and_said():
    p, clock = policy(max_pause_s=5.0)
    send_at_rate(p, clock, 10)  # 10% of the paced rate: our pacing cannot explain a 429
    d = p.on_rate_limited(1.0, False, None, 10)
    assert d.pause_s == 1.0 and d.retry_in == 1.0 and "shared" in d.note
    assert p.limiter.paused_until == pytest.approx(anyio.current_time() + 1.0, abs=0.05)
    d = p.on_rate_limited(60.0, False, None, 10)
    assert d.pause_s == 5.0  # bounded
    d = p.on_rate_limited(None, False, RateLimitInfo(remaining_requests=0, reset_requests_s=2.5), 10)
    assert d.pause_s == 2.5  # the reset header when there is no retry-after


async def test_a_learned_limit_that_its_429s_contradict_is_dropped():
    # Groq's x-ratelimit-limit-requests counts requests per day: read as per minute, it is a pace
    # the provider refuses while we send at a fraction of it.
    p, clock = policy(rpm=None, growth_cap=64)
    assert "learned" in p.on_success(RateLimitInfo(limit_requests=14_400, remaining_requests=14_399), 0.2, 50)
    for _ in range(20):  # what 240/s needs at 1 s of latency: ~240 in flight (Little's law)
        p.on_success(None, 1.0, 50)
    assert p.concurrency.limit > 200
    day = RateLimitInfo(limit_requests=14_400, remaining_requests=14_000)
    notes, paced = [], []
    send_at_rate(p, clock, 1)
    for _ in range(3):
        send_at_rate(p, clock, 1)  # far below 14,400 a minute
        notes.append(p.on_rate_limited(1.0, False, day, 10).note)
        paced.append(p.limiter.current_rpm)
    assert "shared" in notes[0] and "per day" in notes[0] and paced == [14_400, 14_400, None]
    assert "stopped pacing" in notes[2] and "14400 requests/min" in notes[2]
    assert p.limiter.current_rpm is None and p.shaper is None and p.distrusted
    assert p.concurrency.limit <= 64  # no rate known: what only the false one asked for is gone
    assert p.on_success(day, 0.2, 50) is None and p.limiter.current_rpm is None  # never learned again
    d = p.on_rate_limited(1.0, False, None, 10)  # nothing known now: the provider's wait rules
    assert d.retry_in is None and d.pause_s == 1.0
    # A limit the user configured is theirs: the same 429s pause, and it stays.
    configured, clock = policy(rpm=14_400)
    send_at_rate(configured, clock, 1)
    for _ in range(4):
        send_at_rate(configured, clock, 1)
        assert "shared" in configured.on_rate_limited(1.0, False, day, 10).note
    assert configured.limiter.current_rpm == 14_400 and configured.shaper is not None
    # A per-day figure under a configured per-minute one is paced at first; its 429s contradict it,
    # and the configured limit (not none) sets the pace again.
    above, clock = policy(rpm=60_000)
    assert "below the configured 60000" in above.on_success(day, 0.2, 50)
    assert above.limiter.current_rpm == 14_400
    send_at_rate(above, clock, 1)
    for _ in range(3):
        send_at_rate(above, clock, 1)
        note = above.on_rate_limited(1.0, False, day, 10).note
    assert "stopped pacing" in note and "the configured limits set the pace again" in note
    assert above.limiter.current_rpm == 60_000 and above.shaper.per_window == 1000
    assert above.shaper.interval_s == pytest.approx(60 / (60_000 * 0.99))


async def test_with_nothing_known_concurrency_halves_and_the_provider_clock_rules():
    p, clock = policy(rpm=None)
    d = p.on_rate_limited(1.0, False, None, 10)
    assert d.retry_in is None and d.pause_s == 1.0 and p.concurrency.limit == 4
    # The pause is a global one, so it is said - once per 10 s, with the count, not once per 429.
    assert "paused 1s for the provider's retry-after (1 pause since" in d.note
    notes = []
    for _ in range(5):
        clock.t += 2.5
        notes.append(p.on_rate_limited(1.0, False, None, 10).note)
    assert notes[:3] == [None, None, None] and "(4 pauses since the last note)" in notes[3] and notes[4] is None
    assert p.on_rate_limited(None, False, None, 10).note is None  # no wait given: no pause to say


async def test_limits_are_learned_from_headers_where_none_or_a_higher_one_is_configured():
    p, clock = policy(rpm=None)
    note = p.on_success(RateLimitInfo(limit_requests=600, remaining_requests=599, limit_tokens=90_000), 0.2, 50)
    assert (p.limiter.current_rpm, p.limiter.current_tpm) == (600, 90_000) and "learned" in note
    assert p.shaper is not None and p.shaper.interval_s == pytest.approx(60 / (600 * 0.99))
    assert p.on_success(RateLimitInfo(limit_requests=60), 0.2, 50) is None  # learned once, kept
    assert p.take_overruled() is None  # nothing configured was overruled
    configured, _ = policy(rpm=1200)
    configured.on_success(RateLimitInfo(limit_requests=5000, limit_tokens=50_000), 0.2, 50)
    assert configured.limiter.current_rpm == 1200  # under the announced figure, the user's figure stands
    assert configured.limiter.current_tpm == 50_000  # ...and an unconfigured dimension is learned
    assert configured.take_overruled() is None
    # Above the announced figure it would only buy 429s: the provider's figure is paced, and said.
    high, _ = policy(rpm=6000)
    note = high.on_success(RateLimitInfo(limit_requests=100, limit_tokens=50_000), 0.2, 50)
    assert (high.limiter.current_rpm, high.limiter.current_tpm) == (100, 50_000)
    said = "the provider announces 100 requests/min, below the configured 6000; pacing to 100"
    assert note == f"learned the provider's limits from its headers: 50000 tokens/min; {said}"
    assert high.take_overruled() == said and high.take_overruled() is None  # said once
    assert high.shaper is not None and high.shaper.per_window == 1
    assert high.shaper.interval_s == pytest.approx(60 / (100 * 0.99))
    # Anthropic's headers arrive through the same RateLimitInfo (see plugins/teachers/errors.py).
    anth, _ = policy(rpm=None)
    d = anth.on_rate_limited(1.0, False, RateLimitInfo(limit_requests=50, remaining_requests=0), 10)
    assert anth.limiter.current_rpm == 50 and d.pause_s == 0.0 and "learned" in d.note


async def test_littles_law_sizes_concurrency_to_the_rate():
    p, _ = policy(rpm=6000)  # ~101/s paced
    for _ in range(20):
        p.on_success(None, 2.0, 10)  # 2 s latency: ~200 in flight needed
    assert p.concurrency.limit == 256 or p.concurrency.limit >= 300
    slow, _ = policy(rpm=600)
    for _ in range(20):
        slow.on_success(None, 0.5, 10)
    assert 8 <= slow.concurrency.limit <= 12  # ~5 needed: the initial 8 already covers it


async def test_a_token_limit_alone_sizes_concurrency_by_its_request_pace():
    # 600k tokens a minute at 1,000 tokens a request is ~10 requests/s: ~30 in flight at 2 s.
    p, _ = policy(rpm=None, tpm=600_000)
    for _ in range(20):
        p.on_success(None, 2.0, 1000)
    assert 30 <= p.concurrency.limit <= 40
    # Both limits: the slower pace decides (100/s of requests, but only ~10/s of such tokens).
    both, _ = policy(rpm=6000, tpm=600_000)
    for _ in range(20):
        both.on_success(None, 2.0, 1000)
    assert 30 <= both.concurrency.limit <= 40


def test_catch_up_allowance_keeps_every_window_within_the_limit():
    assert catch_up_allowance(0.985) == 0.010
    assert catch_up_allowance(0.99) == pytest.approx(0.00808, abs=1e-4)
    assert catch_up_allowance(0.995) == pytest.approx(0.00402, abs=1e-4)
    rng = random.Random(1)
    for safety in (0.97, 0.985, 0.99, 0.995, 0.999):
        allowance = catch_up_allowance(safety)
        # Claim slots the way the limiter does, each release late by up to the allowance: no
        # 1-second window may hold more than the limit (here 100 per second).
        interval, tat, times = 0.01 / safety, -1.0, []
        t = 0.0
        for _ in range(3000):
            t = max(t, tat - 0.0) + rng.uniform(0, allowance)
            tat = max(tat, t - allowance) + interval
            times.append(t)
        lo = 0
        for hi, x in enumerate(times):
            while x - times[lo] >= 1.0:
                lo += 1
            assert hi - lo + 1 <= 100, (safety, hi - lo + 1)


def test_shares_are_exact_and_never_above_their_worst_case():
    price = ModelPrice(0.15, 0.60)
    rng = random.Random(7)
    for _ in range(500):
        k = rng.randint(1, 16)
        max_tokens = rng.randint(1, 300)
        bound = rng.randint(10, 5000)
        prompt = rng.randint(1, bound)
        texts = [" ".join("w" * rng.randint(1, 5) for _ in range(rng.randint(0, max_tokens))) for _ in range(k)]
        out_total = rng.randint(0, k * max_tokens)
        outs = output_split(out_total, texts, max_tokens)
        got = shares(prompt, outs, price)
        worst = worst_shares(bound, max_tokens, k, price)
        assert sum(a.input_tokens for a in got) == prompt and sum(outs) == out_total
        for a, w in zip(got, worst):
            assert a.input_tokens <= w.input_tokens and a.output_tokens <= w.output_tokens
            assert a.usd <= w.usd + 1e-15 and a.queries == 1
    assert split_evenly(10, 4) == [3, 3, 2, 2] and split_by_weight(10, [1, 1, 3]) == [2, 2, 6]
    assert split_by_weight(5, [0, 0]) == [3, 2]
