"""The official `openai` SDK provider under the faults a provider really has, beside the aiohttp one.

Broken 200 bodies, 200s without `usage`, responses slower than the timeout and dropped
connections, all at once. Each of them may have been billed, so each is charged its worst case
and never retried for free; everything the server answered is settled exactly once; the budget is
spent to the query; and every request the server saw was recorded before it was sent.
"""

from __future__ import annotations

import pytest

from synthledger.testing.projects import write_project
from synthledger.testing.reliability import ServerProcess, check_run_exact, fork_cli, run_events


@pytest.mark.parametrize("provider", ["openai", "openai-compatible"])
def test_malformed_no_usage_slow_and_dropped_under_one_budget(tmp_path, provider):
    budget = 60
    with ServerProcess("--malformed-rate", "0.06", "--no-usage-rate", "0.06", "--drop-rate", "0.06",
                       "--slow-rate", "0.05", "--slow-s", "3", "--latency-ms", "10", "--seed", "7") as server:
        config = write_project(tmp_path, server.url, seeds=8, queries=budget, extra=(
            "\n[limits]\nmax_concurrency = 8\nbackoff_base_s = 0.01\nbackoff_max_s = 0.05\n"
            "breaker_threshold = 50\n"))
        config.write_text(config.read_text().replace(
            'provider = "openai-compatible"', f'provider = "{provider}"\ntimeout_s = 1.0'))
        store = f"sqlite:///{tmp_path / 'store.db'}"
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store", store], cwd=tmp_path,
                       env={"OPENAI_API_KEY": "sk-test-not-checked"})
        stats = server.settled_stats()
    assert res.rc == 0 and res.last_line()[2] == "budget_exhausted", res
    result = check_run_exact(store, res.last_line()[1], budget)
    counts = result["report"].counts
    assert stats["malformed"] > 0 and stats["dropped"] > 0 and stats["client_gone"] > 0, stats
    # Malformed and usage-less 200s, drops and timeouts (the server saw the client go) may all
    # have been billed: each is charged in full, and nothing else is lost.
    assert counts["lost"] == stats["malformed"] + stats["dropped"] + stats["client_gone"], (counts, stats)
    assert counts["settled"] == stats["answered"] == len(result["rows"])
    assert counts["settled"] + counts["lost"] == budget
    events = run_events(tmp_path / "store.db")
    failures = [p for _, t, p, _ in events if t == "attempt_failed"]
    assert any("usage" in p["message"] for p in failures), "no usage-less body was met"
    assert any(p["kind"] == "timeout" for p in failures), "no slow response was met"
    assert stats["received"] == sum(1 for _, t, _, _ in events if t == "query_dispatched")
