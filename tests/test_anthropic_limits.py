"""Anthropic's separate input and output token limits, read from its headers and paced apart (the
test server's side is in test_testserver_rates.py, a whole run's in test_pacing_runs.py)."""

from __future__ import annotations

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
