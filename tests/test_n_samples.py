"""k samples of one prompt as one `n=k` request: answer augmentation's samples of a seed and
self-consistency's votes. Each sample stays its own query (reserved, settled, resumable, exact);
the prompt is paid once; audit puts the shares back together."""

from __future__ import annotations

import signal

import pytest

from synthledger.testing.cli_runs import Project, Server, last_line, wait_for


@pytest.fixture
def project(tmp_path):
    servers: list[Server] = []

    def make(*server_args: str, seeds: int = 10) -> tuple[Project, Server]:
        srv = Server(*server_args)
        servers.append(srv)
        return Project(tmp_path, srv.url, seeds), srv

    yield make
    for srv in servers:
        srv.close()


def test_k_answers_to_a_seed_are_one_request_and_k_queries(project):
    proj, srv = project(seeds=6)
    cfg = proj.write(strategy={"samples_per_seed": 8}, budget={"queries": 48})
    _, report = proj.run_to(cfg)
    stats = srv.stats()
    assert stats["answered"] == 6 and stats["choices"] == 48 == report["counts"]["settled"]
    # The prompt is billed once per request, and the ledger paid exactly what the server counted.
    assert report["spent"]["input_tokens"] == stats["input_tokens"]
    assert report["spent"]["output_tokens"] == stats["output_tokens"]
    assert report["shared_requests"]["requests"] == 6 and report["shared_requests"]["queries"] == 48
    settled = proj.events("query_settled")
    assert len({e["query_id"] for e in settled}) == 48
    assert all(e["shared"]["n"] == 8 for e in settled)
    dispatched = proj.events("query_dispatched")
    assert len(dispatched) == 48 and len({e["request"] for e in dispatched}) == 6
    # One sample per plan item (the quality gate may reject answers cut off at max_tokens).
    done = proj.events("item_done")
    assert len(done) == 48 and {e["outcome"] for e in done} <= {"accepted", "rejected"}
    assert len(proj.events("sample_proposed")) == 48


def test_n_too_large_for_the_token_limit_is_halved_until_it_fits(project):
    """OpenAI refuses a request with more tokens than its per-minute limit (prompt + max_tokens x n)
    with a 429 that no wait clears. Eight samples of 64 tokens do not fit in a 250-token window,
    two do: the engine halves n, re-reserves, and every sample settles, exactly. (The configured
    pace sends one such request every third of a second into a quarter-second window, so the
    refusals counted are the size's. At 40,000 a minute it sent one every 0.252 s: a send a few
    milliseconds late on a loaded CI machine put two in one window, and 7 of 25 came back 429.)"""
    proj, srv = project("--tpm", "60000", "--window-s", "0.25", seeds=3)
    cfg = proj.write(strategy={"samples_per_seed": 8}, budget={"queries": 24}, limits={"tokens_per_minute": 30000})
    _, report = proj.run_to(cfg)
    stats = srv.stats()
    assert report["ok"] and report["counts"]["settled"] == 24 == stats["choices"]
    assert 2 <= stats["bad_requests"] <= 6  # n = 8, then n = 4, refused: at most once per seed each
    assert stats["rate_limited"] <= 0.2 * stats["received"], stats
    assert {(e["shared"] or {}).get("n", 1) for e in proj.events("query_settled")} <= {1, 2}
    assert report["spent"]["input_tokens"] == stats["input_tokens"]  # refusals cost nothing
    assert any("too large" in e["reason"] for e in proj.events("query_abandoned"))
    assert not [e for e in proj.events("sample_rejected") if e["stage"] == "failed"]


def test_one_request_per_sample_pays_the_prompt_each_time(project):
    proj, srv = project(seeds=6)
    cfg = proj.write(strategy={"samples_per_seed": 8, "samples_per_request": 1}, budget={"queries": 48})
    res = proj.generate(cfg)
    assert res.returncode == 0, res.stderr
    report = proj.audit(last_line(res)[0])
    stats = srv.stats()
    assert stats["answered"] == 48 == stats["choices"]
    assert report["spent"]["input_tokens"] == stats["input_tokens"]
    assert report["shared_requests"]["requests"] == 0


def test_self_consistency_votes_go_out_as_one_request(project):
    proj, srv = project(seeds=4)
    cfg = proj.write(strategy={"samples_per_seed": 1}, verifier={"name": "self_consistency", "k": 5},
                     budget={"queries": 24})
    res = proj.generate(cfg)
    assert res.returncode == 0, res.stderr
    report = proj.audit(last_line(res)[0])
    stats = srv.stats()
    # Per seed: its answer (one request) and, when the answer has a final, 5 votes in one request.
    assert stats["choices"] == report["counts"]["settled"]
    assert stats["answered"] <= 8 and report["shared_requests"]["queries"] == 5 * report["shared_requests"]["requests"]


def test_a_provider_without_n_keeps_one_request_per_sample(project):
    proj, srv = project(seeds=3)
    cfg = proj.write(teacher={"provider": "anthropic", "base_url": srv.url, "model": "claude-3-5-haiku-latest"},
                     strategy={"samples_per_seed": 4}, budget={"queries": 12})
    res = proj.generate(cfg)
    assert res.returncode == 0, res.stderr
    report = proj.audit(last_line(res)[0])
    assert srv.stats()["answered"] == 12 == report["counts"]["settled"]


def test_a_server_that_ignores_n_falls_back_to_one_request_per_sample(project):
    proj, srv = project("--ignore-n", seeds=3)
    cfg = proj.write(strategy={"samples_per_seed": 4}, budget={"queries": 12})
    res = proj.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "completed"
    report = proj.audit(run_id)
    stats = srv.stats()
    assert stats["choices"] == 12 == report["counts"]["settled"] == report["spent"]["queries"]
    assert report["spent"]["input_tokens"] == stats["input_tokens"]


def test_killed_with_n_requests_in_flight_then_resumed_pays_nothing_twice(project):
    proj, srv = project("--latency-ms", "400", seeds=12)
    # Room for what the kill leaves in flight (at most 3 requests of 4), charged at its worst case.
    cfg = proj.write(strategy={"samples_per_seed": 4}, budget={"queries": 60}, limits={"max_concurrency": 3})
    proc = proj.popen(cfg)
    wait_for(lambda: len(proj.events("query_settled")) >= 8, 60, "some n requests to settle")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    settled_before = {e["query_id"] for e in proj.events("query_settled")}
    res = proj.generate(cfg, "--resume")
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "completed"
    report = proj.audit(run_id)
    settled = [e["query_id"] for e in proj.events("query_settled")]
    assert len(settled) == len(set(settled)) == 48  # every sample settled once
    resumed_at = proj.events("run_resumed")
    assert resumed_at
    after = proj.events("query_dispatched")[-1]
    assert after["query_id"] not in settled_before
    # Whatever was in flight at the kill is charged at its worst case, never settled twice.
    assert report["spent"]["queries"] == 48 + report["counts"]["lost"]


def test_items_the_budget_refused_beside_others_run_again_alone(project):
    """A dollar budget is checked at dispatch (an item's pledge cannot price a prompt not yet
    written): all 80 items start, the first requests reserve their worst cases, the rest are
    refused. They were dropped, and the plan having been walked, the run said `completed` with 4 of
    80 items done and under 40% of its budget spent."""
    proj, srv = project(seeds=10)
    cfg = proj.write(teacher={"max_tokens": 100}, budget={"queries": 1000, "usd": 0.0123},
                     pricing={"test-teacher": {"input_per_mtok": 10, "output_per_mtok": 30}},
                     strategy={"samples_per_seed": 8, "samples_per_request": 4})
    _, report = proj.run_to(cfg, status="budget_exhausted")
    done = proj.events("item_done")
    assert len(done) == report["counts"]["settled"] > 4
    assert 0.0123 * 0.6 < report["spent"]["usd"] <= 0.0123  # near the budget, never over it
