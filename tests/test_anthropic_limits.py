"""Anthropic's separate input and output token limits, read from its headers and paced apart (the
test server's side is in test_testserver_rates.py, a whole run's in test_pacing_runs.py)."""

from __future__ import annotations

import math

import anyio
import pytest


def test_anthropics_split_headers_are_read_instead_of_the_combined_one():
    from synthledger.plugins.teachers.errors import rate_limits

    stamp = "2999-01-01T00:00:00Z"
    both = {f"anthropic-ratelimit-{k}-{f}": v for k, lim, left in
            (("requests", "1000", "999"), ("input-tokens", "80000", "79000"), ("output-tokens", "16000", "15000"),
             ("tokens", "16000", "15000"))
            for f, v in (("limit", lim), ("remaining", left), ("reset", stamp))}
    info = rate_limits(both)
    assert (info.limit_requests, info.limit_input_tokens, info.limit_output_tokens) == (1000, 80_000, 16_000)
    # `tokens-*` is the smaller of the two, repeated: paced as prompt + max_tokens it would bind wrongly.
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens_s) == (None, None, None)
    combined = rate_limits({k: v for k, v in both.items() if "put-tokens" not in k})
    assert (combined.limit_tokens, combined.limit_input_tokens, combined.limit_output_tokens) == (16_000, None, None)


async def test_the_output_limit_is_charged_at_the_cap_and_settled_to_what_was_written():
    from synthledger.engine.scheduler.limiter import RateLimiter, Tokens

    lim = RateLimiter(None, None, safety=1.0, output_tokens_per_minute=6000)  # 100 output tokens a second
    assert lim.paced and lim.token_limits() == {"output_tokens": 6000}
    est, written = Tokens(300, 200, 100), Tokens(150, 50, 25)
    assert lim.interval_for(est) == pytest.approx(1.0)  # the input side is not limited here
    t0 = anyio.current_time()
    await lim.acquire(est)  # a second of output, charged at the cap
    lim.settle(est, written)  # 75 of the 100 come back: a quarter second is what it took
    await lim.acquire(Tokens(0, 0, 75))
    assert 0.15 < anyio.current_time() - t0 < 0.5  # not the second the cap would have held
    with anyio.move_on_after(0.3) as scope:
        await lim.acquire(Tokens(0, 0, 50))  # behind the 75 just charged: ~0.75 s more
    assert scope.cancelled_caught
    both = RateLimiter(None, 60_000, input_tokens_per_minute=600, output_tokens_per_minute=6000, safety=1.0)
    assert both.interval_for(Tokens(300, 200, 100)) == pytest.approx(20.0)  # the input limit is the slowest


def test_learned_split_limits_are_kept_apart_and_forgotten_together():
    from synthledger.engine.scheduler.limiter import RateLimiter

    lim = RateLimiter(None, None)
    changed = lim.learn(50, None, input_tokens_per_minute=30_000, output_tokens_per_minute=8_000)
    assert changed == {"requests": (None, 50.0), "input_tokens": (None, 30_000.0), "output_tokens": (None, 8_000.0)}
    assert lim.current_tpm is None and lim.token_limits() == {"input_tokens": 30_000.0, "output_tokens": 8_000.0}
    assert lim.forget_learned() == ["input_tokens", "output_tokens", "requests"]
    assert not lim.paced


async def test_an_output_limit_is_paced_at_what_replies_write_not_at_their_cap():
    """1,000 output tokens a second, `max_tokens` 64, replies of 32 tokens that end 60 ms after
    their send. Charged at the cap and refunded at the end, each refund came back after the next
    release was due, and the time waited for the cap was lost: a release every ~60 ms, about half
    the limit (a real run: 0.63-0.83 of it). The pace charges what replies have been writing; only
    the per-second window, which counts the cap until a reply ends as the provider does, holds it
    below the whole limit. On a virtual clock: exact figures, no real time."""
    from synthledger.engine.scheduler.limiter import RateLimiter, Tokens
    from synthledger.testing.virtual_clock import paced_sends

    lim = RateLimiter(None, None, safety=1.0, output_tokens_per_minute=60_000)
    sent = await paced_sends(lim, Tokens(74, 10, 64), Tokens(42, 10, 32), 0.06, 300)
    per_s = 32 * (len(sent) - 1) / (sent[-1] - sent[0])
    assert per_s >= 0.9 * 1000, per_s  # 0.93 (the cap-charged pace: 0.53)
    # The window still holds: no second's sends count more than the limit as the provider counts
    # them (the cap while a reply is being written, what it wrote after).
    for t in sent:
        counted = sum(32 if s + 0.06 <= t else 64 for s in sent if t - 1.0 < s <= t)
        assert counted <= 1000, (t, counted)


def test_likely_tokens_learn_the_prompt_per_byte_and_each_max_tokens_apart():
    """Charged at their bounds, requests counting 548 prompt tokens took 2,064 of a limit each. The
    prompt is learned per byte of its bound; the output for each `max_tokens` apart, since a
    teacher's short answers (cap 64, ~32 written) and an augmenter's long questions (cap 256, ~240)
    on one endpoint would under-charge the one and over-charge the other under one mean."""
    from synthledger.engine.scheduler.likely_tokens import PROMPT_MARGIN, LikelyTokens
    from synthledger.engine.scheduler.limiter import Tokens

    likely = LikelyTokens()
    short, long = Tokens(1000 + 64, 1000, 64), Tokens(2000 + 256, 2000, 256)
    assert likely.likely(short) == short  # nothing counted yet: the bounds
    assert likely.settle(short, Tokens(250 + 64, 250, 32)) == short  # (nothing was charged below it)
    assert likely.settle(long, None) == long  # refused: nothing learned from it
    prompt = math.ceil(1000 * 0.25 * PROMPT_MARGIN)
    assert likely.likely(short) == Tokens(prompt + 64, prompt, 32)  # max_tokens stays whole in the total
    assert likely.at_admission(short) == Tokens(prompt + 64, prompt, 64)  # while written: the cap
    assert likely.likely(long).output == 256  # no reply of this cap yet
    likely.settle(long, Tokens(500 + 256, 500, 240))
    first = likely.likely(short)
    assert first.output == 32 and likely.likely(long).output == 240
    likely.charged(short, first)
    likely.charged(short, likely.likely(short))
    assert likely.settle(short, None) == first  # oldest first: what was charged comes back
    assert likely.settle(short, Tokens(314, 250, 64)) == first  # (as charged: the mean moved after)
    assert likely.likely(short).output == math.ceil(64 * 0.55)  # a full reply moved the mean a tenth
    assert likely.settle(short, None) == short  # nothing left charged: the estimate itself
    terse = LikelyTokens()  # a tokenizer that reads 10 bytes a token: the provider's admission may not
    terse.settle(short, Tokens(100 + 64, 100, 64))
    assert terse.likely(short).input == 105 and terse.at_admission(short).input == 250

