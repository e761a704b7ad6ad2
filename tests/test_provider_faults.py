"""Usage a provider reports above what the request could possibly use is a provider fault.

A provider (or gateway) that reports 8x the real usage would otherwise push spend past the budget
one reply at a time while the run goes on. The fault is recorded as its own event, the answer is
settled at what was reported (that is what will be billed), the run stops with that reason, and
`show` and `audit` both say so.
"""

from __future__ import annotations

import json
import re

from synthledger.engine.api import Usage
from synthledger.engine.ledger.ledger import Amount
from synthledger.engine.run.usage_check import usage_fault
from synthledger.testing.projects import write_project
from synthledger.testing.reliability import ServerProcess, fork_cli, run_events


def test_usage_fault_names_what_is_impossible():
    worst = Amount(queries=1, input_tokens=120, output_tokens=32)
    assert usage_fault(Usage(100, 32), worst) is None
    assert "40 completion tokens for a request capped at 32" in usage_fault(Usage(100, 40), worst)
    assert "500 prompt tokens" in usage_fault(Usage(500, 1), worst)


def _run(tmp_path, *server_args: str, budget: str = "queries = 20"):
    server = ServerProcess(*server_args)
    config = write_project(tmp_path, server.url, seeds=6, queries=20, max_tokens=32,
                           extra="\n[limits]\nmax_concurrency = 1\n")
    config.write_text(config.read_text().replace("queries = 20", budget))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store", store], cwd=tmp_path)
    return server, store, res


def test_overreported_usage_stops_the_run_and_shows_in_show_and_audit(tmp_path):
    server, store, res = _run(tmp_path, "--usage-factor", "8")
    try:
        assert server.stats()["answered"] == 1, "the run went on after the fault"
    finally:
        server.stop()
    assert res.rc == 1 and "provider fault" in res.stderr and "Traceback" not in res.stderr, res
    run_id, status = res.last_line()[1:3]
    assert status == "failed"
    faults = [p for _, t, p, _ in run_events(tmp_path / "store.db") if t == "provider_fault"]
    assert len(faults) == 1 and faults[0]["kind"] == "usage_above_cap"
    assert faults[0]["reported"]["output_tokens"] > faults[0]["cap"]["output_tokens"] == 32
    assert "prompt tokens" in faults[0]["message"] and "completion tokens" in faults[0]["message"]

    audit = fork_cli(["audit", run_id, "--json", "--store", store], cwd=tmp_path)
    report = json.loads(audit.stdout)
    assert audit.rc == 0 and report["ok"], report  # no limit was broken: the fault is reported, not a violation
    assert report["counts"]["provider_faults"] == 1 and len(report["provider_faults"]) == 1
    text = fork_cli(["audit", run_id, "--store", store], cwd=tmp_path)
    assert "provider fault at seq" in text.stdout and "usage above the request's cap" in text.stdout, text

    show = json.loads(fork_cli(["show", run_id, "--json", "--store", store], cwd=tmp_path).stdout)
    assert "provider fault" in show["message"]
    assert list(show["provider_faults"].values())[0].startswith("seq ")
    assert show["queries"]["provider_faults"] == 1


def test_a_fault_that_breaks_a_limit_is_named_as_the_cause_in_audit(tmp_path):
    server, store, res = _run(tmp_path, "--usage-factor", "8", budget="output_tokens = 100")
    server.stop()
    assert res.rc == 1 and "provider fault" in res.stderr, res
    run_id = res.last_line()[1]
    audit = fork_cli(["audit", run_id, "--json", "--store", store], cwd=tmp_path)
    report = json.loads(audit.stdout)
    assert audit.rc == 1 and not report["ok"]
    assert report["spent"]["output_tokens"] > 100
    assert any("provider_fault" in v["message"] for v in report["violations"]), report["violations"]
    # The summary says what was spent, past the limit too (it was capped: "... of 100 (100.0%)").
    said = re.search(r"output_tokens (\d+) of 100 \((\d+\.\d)%\)", res.stderr)
    assert said and int(said[1]) == report["spent"]["output_tokens"] and float(said[2]) == int(said[1]), res.stderr


def test_honest_usage_is_no_fault(tmp_path):
    server, store, res = _run(tmp_path, budget="queries = 5")
    server.stop()
    assert res.rc == 0 and res.last_line()[2] == "budget_exhausted", res
    assert not [t for _, t, _, _ in run_events(tmp_path / "store.db") if t == "provider_fault"]
