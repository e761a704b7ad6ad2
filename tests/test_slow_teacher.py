"""A model slower than `[teacher] timeout_s`: a timed-out attempt may be billed, so waiting the same
time again would only pay for another. Its retry waits longer (twice, then four times the timeout),
through the engine's time limit and the teacher's own client alike, and the run says so once."""

from __future__ import annotations

import pytest

from synthledger.engine.api import ChatRequest
from synthledger.engine.scheduler import AdaptiveConcurrency, CircuitBreaker, RateLimiter, RetryPolicy
from synthledger.testing.cli_runs import Project, Server, last_line

PROVIDERS = {
    "openai-compatible": {},  # our own HTTP client
    "openai": {"provider": "openai"},  # the official SDKs, each with its own timeout
    "anthropic": {"provider": "anthropic", "model": "claude-3-5-haiku-latest"},
}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_a_retry_after_a_timeout_waits_longer_instead_of_paying_again(tmp_path, provider):
    srv = Server("--latency-ms", "1500")  # every answer takes 1.5 s; the timeout is 1 s
    try:
        proj = Project(tmp_path, srv.url, 4)
        teacher = {"timeout_s": 1.0, **PROVIDERS[provider]}
        if provider == "anthropic":
            teacher["base_url"] = srv.url
        cfg = proj.write(teacher=teacher, budget={"queries": 10}, strategy={"samples_per_seed": 1},
                         limits={"max_concurrency": 4})
        res = proj.generate(cfg)
        assert res.returncode == 0, res.stderr
        run_id, status = last_line(res)
        assert status == "completed", res.stdout
        report = proj.audit(run_id)
        # Each query: one timed-out attempt (counted as spent: it may be billed), then its answer.
        # Waiting 1 s every time, all six attempts of each would time out until the budget ran out.
        assert report["counts"]["settled"] == 4 == srv.stats()["answered"]
        assert report["spent"]["queries"] == 8 and report["ok"]
        timed_out = [e for e in proj.events("attempt_failed") if e["kind"] == "timeout"]
        assert len(timed_out) == 4 and all(e["maybe_billed"] for e in timed_out)
        said = [e for e in proj.events("run_warning") if e["kind"] == "slow_teacher"]
        assert len(said) == 1 and "raise [teacher] timeout_s" in said[0]["message"], said
    finally:
        srv.close()


def test_the_time_limit_doubles_per_timeout_up_to_four_times():
    from synthledger.engine.scheduler.endpoint import TIMEOUT_GROWTH, Endpoint
    from synthledger.plugins.teachers.openai_compatible import factory

    teacher = factory({"provider": "openai-compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                       "timeout_s": 60})
    ep = Endpoint(teacher, "m", {}, RateLimiter(None, None), AdaptiveConcurrency(4, 4), CircuitBreaker(2, 5.0),
                  RetryPolicy(), None, timeout_s=60.0)
    assert [ep.timeout_after(n) for n in range(5)] == [60.0, 120.0, 240.0, 240.0, 240.0]
    assert TIMEOUT_GROWTH == 4
    # The limit travels with the request and is never part of what the model is sent.
    req = ChatRequest(model="m", messages=({"role": "user", "content": "hi"},), max_tokens=8, timeout_s=120.0)
    assert b"timeout" not in teacher._body(req)


def test_a_pool_smaller_than_max_concurrency_bounds_what_is_in_flight(tmp_path):
    """`max_connections` (the client's pool) below `max_concurrency`: requests past the pool waited for
    a connection inside the call, under its timeout, and timed out counted as maybe billed though they
    never left (QA: 9 of 12 lost). In flight is bounded by the pool: each waits its turn unsent."""
    from synthledger.testing.cli_runs import Project, Server, last_line

    srv = Server("--latency-ms", "400")
    try:
        proj = Project(tmp_path, srv.url, 4)
        cfg = proj.write(teacher={"max_connections": 1, "timeout_s": 1.0}, limits={"max_concurrency": 4},
                         budget={"queries": 4})
        res = proj.generate(cfg)
        assert res.returncode == 0, res.stderr
        run_id, status = last_line(res)
        report = proj.audit(run_id)
        assert srv.stats()["received"] == 4 and not proj.events("attempt_failed")
        assert report["spent"]["queries"] == 4
    finally:
        srv.close()
