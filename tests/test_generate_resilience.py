"""`generate` under the failures a real run meets: kill -9, a second process, 429 storms, 5xx,
garbled bodies, dropped connections, a teacher that hangs, plan changes between sessions.

Every test drives the real CLI in a subprocess against the real test teacher server in another
process, then checks three independent witnesses against each other: what the server says it
answered, what `audit --json` recomputes from the event log, and what `export` writes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / "cli.py")

QUESTIONS = [f"Tom has {a} apples and buys {b} more. How many apples does he have now?"
             for a, b in [(3, 1), (4, 3), (5, 5), (7, 2), (9, 4), (2, 8), (6, 6), (8, 1), (1, 9), (4, 4)]]


# ---- the test teacher server, as its own process --------------------------------------------------------

@dataclass
class Server:
    proc: subprocess.Popen
    url: str

    def stats(self, log: bool = False) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats?log={int(log)}", timeout=10) as r:
            return json.loads(r.read())

    def control(self, **changes: Any) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.url}/control", data=json.dumps(changes).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def answered_by_model(self) -> Counter:
        return Counter(e["model"] for e in self.stats(log=True)["log"] if e["outcome"] == "answered")


@pytest.fixture
def serve(tmp_path: Path):
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> Server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "synthledger.testing.server", "--port", "0",
             "--stats-file", str(tmp_path / f"stats{len(procs)}.json"), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("listening on "), f"server did not start: {line!r}"
        return Server(proc, line.split()[-1])

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("SYNTHLEDGER_STORE", None)
    return env


# ---- a run's files and the CLI -------------------------------------------------------------------------

@dataclass
class Run:
    dir: Path
    url: str
    store: str = ""
    teacher: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = f"sqlite:///{self.dir / 'store.db'}"

    def write(self, name: str = "run.toml", **overrides: dict[str, Any]) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "run": {"name": "resilience", "store": self.store},
            "seeds": {"source": "jsonl", "path": str(self.dir / "seeds.jsonl")},
            "teacher": {"provider": "openai-compatible", "base_url": self.url + "/v1", "model": "test-teacher",
                        "max_tokens": 64, "timeout_s": 10.0, **self.teacher},
            "limits": {"max_concurrency": 16, "backoff_base_s": 0.05, "backoff_max_s": 1.0,
                       "breaker_cooldown_s": 0.2},
            "budget": {"queries": 100},
            "strategy": {"name": "answer_augmentation"},
        }
        for k, v in {**self.sections, **overrides}.items():
            sections[k] = {**sections.get(k, {}), **v}
        path = self.dir / name
        path.write_text("".join(f"[{k}]\n" + "".join(f"{kk} = {_toml(vv)}\n" for kk, vv in v.items() if vv is not None)
                                + "\n" for k, v in sections.items()))
        return path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, CLI, *args], cwd=self.dir, env=_env(), capture_output=True,
                              text=True, timeout=timeout)

    def generate(self, config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.cli("generate", "--config", str(config), "--no-progress", *args, timeout=timeout)

    def popen_generate(self, config: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, CLI, "generate", "--config", str(config), "--no-progress", *args],
                                cwd=self.dir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def audit(self, run_id: str) -> dict[str, Any]:
        res = self.cli("audit", run_id, "--json", "--store", self.store)
        report = json.loads(res.stdout)
        assert res.returncode == 0 and report["ok"], f"audit failed: {report.get('violations')}\n{res.stderr}"
        return report

    def export(self, run_id: str) -> list[dict[str, Any]]:
        out = self.dir / "out.jsonl"
        res = self.cli("export", run_id, "--format", "chat", "--out", str(out), "--store", self.store)
        assert res.returncode == 0, res.stderr
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]

    def events(self, *types: str) -> list[tuple[str, dict[str, Any]]]:
        db = self.dir / "store.db"
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            marks = ",".join("?" * len(types))
            rows = con.execute(f"SELECT type, payload FROM events WHERE type IN ({marks}) ORDER BY seq", types).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []
        finally:
            con.close()
        return [(t, json.loads(p)) for t, p in rows]

    def count(self, type_: str) -> int:
        return len(self.events(type_))


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    return repr(v)


def last_line(res: subprocess.CompletedProcess) -> tuple[str, str]:
    """The run id and status from generate's last stdout line: `run <id> <status> (...)`."""
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines, f"no stdout (rc {res.returncode}); stderr:\n{res.stderr}"
    words = lines[-1].split()
    assert words[0] == "run" and len(words) >= 3, lines[-1]
    return words[1], words[2]


def write_seeds(d: Path, questions: list[str] = QUESTIONS) -> None:
    with (d / "seeds.jsonl").open("w") as fh:
        for i, q in enumerate(questions):
            fh.write(json.dumps({"id": f"s{i}", "question": q, "answer": f"#### {i}"}) + "\n")


@pytest.fixture
def make_run(tmp_path: Path, serve):
    def make(*server_args: str, questions: list[str] = QUESTIONS) -> tuple[Run, Server]:
        server = serve(*server_args)
        write_seeds(tmp_path, questions)
        return Run(tmp_path, server.url), server

    return make


def assert_dataset_exact(run: Run, run_id: str) -> list[dict[str, Any]]:
    """Every accepted sample is in the export exactly once, and nothing else is."""
    rows = run.export(run_id)
    ids = [r["metadata"]["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate samples: {[k for k, n in Counter(ids).items() if n > 1][:5]}"
    accepted = [p["sample_id"] for _, p in run.events("sample_accepted")]
    assert sorted(ids) == sorted(accepted)
    items = [p["item"] for _, p in run.events("item_done")]
    assert len(items) == len(set(items)), "an item was finished twice"
    return rows


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---- the tests --------------------------------------------------------------------------------------------

def test_kill_9_mid_run_then_resume_pays_nothing_twice(make_run):
    run, server = make_run("--latency-ms", "50")
    cfg = run.write(budget={"queries": 300}, limits={"max_concurrency": 8})
    proc = run.popen_generate(cfg)
    wait_for(lambda: run.count("query_settled") >= 120, 60, "40% of the budget settled", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    before = {p["sample_id"] for _, p in run.events("sample_accepted")}
    settled_before = {p["query_id"] for _, p in run.events("query_settled")}
    assert 120 <= len(settled_before) < 300

    res = run.generate(cfg, "--resume")
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"

    report = run.audit(run_id)
    assert report["spent"]["queries"] == 300 == report["budget"]["queries"]
    stats = server.stats()
    assert stats["answered"] <= 300, "the server answered more requests than the budget"
    # Each attempt in flight at the kill was charged in full at the resume (the provider may
    # bill it); nothing else was lost, and no settled query was ever sent again.
    assert report["counts"]["lost"] <= 8
    assert report["counts"]["settled"] + report["counts"]["lost"] == 300
    settled = [p["query_id"] for _, p in run.events("query_settled")]
    assert len(settled) == len(set(settled)) == report["counts"]["settled"]
    rows = assert_dataset_exact(run, run_id)
    assert before <= {r["metadata"]["sample_id"] for r in rows}, "samples accepted before the kill were lost"
    assert len(rows) == report["counts"]["settled"]  # answer_augmentation: one query, one sample
    # A query the kill left open continues its attempt count after the resume (so its attempt cap
    # holds across processes), and its messages are recorded once, on its first reservation.
    attempts: dict[str, list[int]] = {}
    with_messages: list[str] = []
    for type_, p in run.events("query_reserved", "query_dispatched"):
        if type_ == "query_dispatched":
            attempts.setdefault(p["query_id"], []).append(p["attempt"])
        elif p.get("messages") is not None:
            with_messages.append(p["query_id"])
    assert any(len(a) > 1 for a in attempts.values()), "no interrupted query was sent again"
    assert all(a == list(range(1, len(a) + 1)) for a in attempts.values()), "attempt numbers restarted"
    assert len(with_messages) == len(set(with_messages)) == len(attempts)


def test_resume_without_the_config_file_uses_the_recorded_config(make_run, tmp_path):
    # `generate --resume` alone, from another directory, with the config file gone: the run's
    # recorded config (seed path relative to where the file was) carries it, and --set still applies.
    run, server = make_run("--latency-ms", "50")
    run.sections["seeds"] = {"path": "seeds.jsonl"}  # relative to the config file's folder
    cfg = run.write(budget={"queries": 200}, limits={"max_concurrency": 8})
    proc = run.popen_generate(cfg)
    wait_for(lambda: run.count("query_settled") >= 40, 60, "40 queries settled", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    cfg.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    refused = subprocess.run([sys.executable, CLI, "generate", "--no-progress", "--store", run.store],
                             cwd=elsewhere, env=_env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--config is required" in refused.stderr
    res = subprocess.run([sys.executable, CLI, "generate", "--resume", "--no-progress", "--store", run.store,
                          "--set", "budget.queries=240"], cwd=elsewhere, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"
    report = run.audit(run_id)
    assert report["spent"]["queries"] == 240 == report["budget"]["queries"]
    assert server.stats()["answered"] <= 240
    assert_dataset_exact(run, run_id)
    again = subprocess.run([sys.executable, CLI, "generate", "--resume", "--no-progress", "--store", run.store],
                           cwd=elsewhere, env=_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "no unfinished run" in again.stderr


def test_second_process_is_refused_while_the_first_runs_and_sigterm_stops_cleanly(make_run):
    run, server = make_run("--latency-ms", "100")
    cfg = run.write(budget={"queries": 200}, limits={"max_concurrency": 2})
    first = run.popen_generate(cfg)
    wait_for(lambda: run.count("query_settled") >= 5, 60, "the first run to be under way", first)

    t0 = time.monotonic()
    second = run.generate(cfg, "--resume", timeout=30)
    assert time.monotonic() - t0 < 15, "the second process did not fail at once"
    assert second.returncode != 0
    assert "another process" in second.stderr and "Traceback" not in second.stderr, second.stderr
    assert first.poll() is None, "the refused resume disturbed the running one"

    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=30)
    assert first.returncode == 1, err
    run_id, status = last_line(subprocess.CompletedProcess([], first.returncode, out, err))
    assert status == "interrupted"
    assert "Traceback" not in err, err
    report = run.audit(run_id)
    assert report["status"] == "interrupted"
    assert report["counts"]["lost"] == 0, "a graceful stop should let in-flight requests finish"

    server.control(latency_ms=0)
    res = run.generate(cfg, "--resume")
    assert res.returncode == 0, res.stderr
    assert last_line(res) == (run_id, "budget_exhausted")
    report = run.audit(run_id)
    assert report["spent"]["queries"] == 200
    assert server.stats()["answered"] == report["counts"]["settled"] == 200
    assert len(assert_dataset_exact(run, run_id)) == 200


def test_errors_garbled_bodies_drops_and_429s_under_a_paced_limit(make_run):
    # 1200 RPM enforced over a one-second window (20/s), plus 5% 500/503, 3% garbled 200s and
    # 3% dropped connections. The engine knows the RPM and paces under it.
    run, server = make_run("--rpm", "1200", "--window-s", "1", "--latency-ms", "20",
                           "--error-rate", "0.05", "--malformed-rate", "0.03", "--drop-rate", "0.03")
    cfg = run.write(budget={"queries": 150}, limits={"requests_per_minute": 1200, "max_concurrency": 16})
    res = run.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"
    report = run.audit(run_id)
    stats = server.stats()
    assert report["spent"]["queries"] == 150
    # Garbled 200s and drops may have been billed: they are charged in full, never retried for free.
    assert report["counts"]["lost"] == stats["malformed"] + stats["dropped"] > 0
    assert report["counts"]["settled"] == stats["answered"]
    assert report["counts"]["settled"] + report["counts"]["lost"] == 150
    assert stats["errors"] > 0
    assert stats["rate_limited"] <= 0.03 * stats["received"], stats
    assert_dataset_exact(run, run_id)


def test_sustained_429s_when_the_engine_does_not_know_the_limit(make_run):
    # The server allows 10 requests per second; the engine is told nothing and starts with 16 in
    # flight. Retry-after, AIMD and the limiter's pause must settle it without losing queries.
    run, server = make_run("--rpm", "600", "--window-s", "1", "--latency-ms", "20")
    cfg = run.write(budget={"queries": 60}, limits={"max_concurrency": 16, "max_attempts": 3})
    res = run.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"
    report = run.audit(run_id)
    stats = server.stats()
    assert stats["rate_limited"] > 0, "the scenario did not produce 429s"
    assert report["spent"]["queries"] == 60 == report["counts"]["settled"] == stats["answered"]
    assert not [p for _, p in run.events("sample_rejected") if p["stage"] == "failed"], "429s failed an item"
    print("429 share", stats["rate_limited"], stats["received"])
    assert stats["rate_limited"] <= 0.5 * stats["received"], stats
    assert len(assert_dataset_exact(run, run_id)) == 60


@pytest.mark.slow
def test_a_hanging_teacher_ends_the_run_and_a_later_resume_finishes_without_paying_twice(make_run):
    run, server = make_run("--hang")
    cfg = run.write(budget={"queries": 100}, teacher={"timeout_s": 0.5},
                    limits={"max_concurrency": 4, "breaker_threshold": 3, "breaker_cooldown_s": 0.1})
    t0 = time.monotonic()
    res = run.generate(cfg, timeout=120)
    assert time.monotonic() - t0 < 60
    assert res.returncode == 1, res.stderr
    run_id, status = last_line(res)
    assert status == "failed"
    assert "keeps failing" in res.stderr or "did not recover" in res.stderr, res.stderr
    report = run.audit(run_id)
    assert report["status"] == "failed"
    assert server.stats()["answered"] == 0
    lost = report["counts"]["lost"]
    assert 0 < lost < 100  # every timed-out attempt is charged, the breaker kept it from being all

    server.control(hang=False)
    res = run.generate(cfg, "--resume")
    assert res.returncode == 0, res.stderr
    assert last_line(res) == (run_id, "budget_exhausted")
    report = run.audit(run_id)
    assert report["spent"]["queries"] == 100
    assert server.stats()["answered"] == report["counts"]["settled"] == 100 - report["counts"]["lost"]
    assert_dataset_exact(run, run_id)


def test_a_hang_that_eats_the_budget_ends_as_budget_exhausted(make_run):
    run, server = make_run("--hang")
    cfg = run.write(budget={"queries": 6}, teacher={"timeout_s": 0.3},
                    limits={"max_concurrency": 2, "breaker_threshold": 50})
    res = run.generate(cfg, timeout=60)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"
    report = run.audit(run_id)
    assert report["spent"]["queries"] == 6 == report["counts"]["lost"]
    assert server.stats()["answered"] == 0


def test_token_and_usd_budgets_are_never_exceeded(make_run):
    run, server = make_run()
    cfg = run.write(budget={"queries": None, "output_tokens": 1500}, limits={"max_concurrency": 8})
    res = run.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"
    report = run.audit(run_id)
    stats = server.stats()
    assert report["spent"]["output_tokens"] <= 1500
    assert stats["output_tokens"] == report["spent"]["output_tokens"]
    assert 1500 - 64 < report["spent"]["output_tokens"]  # stops only when one more reply might not fit

    # USD: $2 per million input and $8 per million output tokens; a $0.01 budget. Asked afresh: the
    # first run's answers, reused, would count at this run's price without reaching the server.
    cfg = run.write("usd.toml", run={"name": "usd", "reuse": False}, budget={"queries": None, "usd": 0.01},
                    **{'pricing."test-teacher"': {"input_per_mtok": 2.0, "output_per_mtok": 8.0}})
    before = server.stats()
    res = run.generate(cfg, timeout=120)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"
    report = run.audit(run_id)
    after = server.stats()
    served_usd = ((after["input_tokens"] - before["input_tokens"]) * 2.0
                  + (after["output_tokens"] - before["output_tokens"]) * 8.0) / 1e6
    assert served_usd <= 0.01 + 1e-12
    assert abs(report["spent"]["usd"] - served_usd) < 1e-9
    assert report["spent"]["usd"] > 0.01 * 0.9


def test_counted_roles_and_per_role_limits(make_run):
    run, server = make_run()
    cfg = run.write(
        augmenter={"provider": "openai-compatible", "base_url": run.url + "/v1", "model": "aug-model",
                   "max_tokens": 64},
        strategy={"name": "question_rephrase"},
        dedupe={"enabled": False},
        budget={"queries": 30, "counted_roles": ["teacher"], "roles": {"augmenter": {"queries": 45}}},
    )
    res = run.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"
    report = run.audit(run_id)
    assert report["spent"]["queries"] == 30  # only the teacher counts against the total
    assert report["by_role"]["teacher"]["queries"] == 30
    assert report["by_role"]["augmenter"]["queries"] <= 45
    served = server.answered_by_model()
    assert served["test-teacher"] == 30 and served["aug-model"] == report["by_role"]["augmenter"]["queries"]
    # The limit that ended the run is named, a role's too (QA: "queries 15 of 20" of a run its
    # augmenter's limit had ended).
    tight = run.write("tight.toml", run={"name": "tight"}, augmenter={
        "provider": "openai-compatible", "base_url": run.url + "/v1", "model": "aug-model", "max_tokens": 64},
        strategy={"name": "question_rephrase"}, dedupe={"enabled": False},
        budget={"queries": 30, "counted_roles": ["teacher"], "roles": {"augmenter": {"queries": 3}}})
    res = run.generate(tight)
    assert res.returncode == 0 and "| augmenter queries 3 of 3 (100.0%) |" in res.stderr, res.stderr
    shown = run.cli("show", "tight", "--json", "--store", run.store)
    assert "budget exhausted (augmenter queries 3 of 3): spent" in shown.stdout, shown.stdout


def _reserve_unsent(store_url: str, run_id: str, n: int, budget: dict[str, Any]) -> None:
    """Append what a session (resumed with `budget`) killed between its reservations and their
    dispatch leaves: `n` queries reserved and never sent (the dispatch is recorded before a send)."""
    from synthledger.engine.ledger.events import Cost, QueryReserved, RunResumed
    from synthledger.engine.ledger.journal import Journal
    from synthledger.store.eventstore import EventStore
    from synthledger.store.records import owner_token

    store, owner = EventStore(store_url), owner_token()
    store.acquire(run_id, owner)
    info = store.get_run(run_id)
    journal = Journal(store, run_id, info.last_seq, info.head_hash, owner, durable_each=True)
    journal.emit(RunResumed(pid=os.getpid(), owner=owner, config_hash=info.config_hash, budget=budget))
    for i in range(n):
        journal.emit(QueryReserved(query_id=f"qunsent{i}", key=f"k{i}", role="teacher", purpose="answer",
                                   strategy="answer_augmentation", item=f"unsent{i}", provider="openai-compatible",
                                   model="test-teacher", worst=Cost(queries=1, input_tokens=10, output_tokens=64)))
    store.release(run_id, owner, "interrupted")
    store.close()


def test_a_budget_lowered_to_what_was_sent_is_accepted_though_more_was_reserved(make_run):
    # QA: killed with 95 settled, 16 out and 16 reserved but never sent, the resume refused any
    # budget under 127 ("has already spent 127 queries"); 111 were spent. What was never sent is
    # released by the resume, so it is no spend.
    run, server = make_run()
    cfg = run.write(budget={"queries": 30})
    res = run.generate(cfg)
    run_id, status = last_line(res)
    assert status == "budget_exhausted"
    (_, started), = run.events("run_started")
    _reserve_unsent(run.store, run_id, 5, {**started["budget"], "total": {**started["budget"]["total"], "queries": 40}})
    res = run.generate(cfg, "--run", run_id)  # with its budget of 30 again: what it sent
    assert res.returncode == 0 and "already spent" not in res.stderr, res.stderr
    report = run.audit(run_id)
    assert report["spent"]["queries"] == 30  # (audit ok: the 5 were released, nothing over)


def test_resume_refuses_a_changed_plan_and_accepts_a_changed_budget(make_run):
    run, server = make_run()
    cfg = run.write(budget={"queries": 30})
    res = run.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"

    res = run.generate(cfg, "--run", run_id, "--set", "strategy.temperature=0.9")
    assert res.returncode == 2 and "strategy.temperature" in res.stderr and "0.9" in res.stderr, res.stderr
    res = run.generate(cfg, "--run", run_id, "--set", "teacher.model=other-model")
    assert res.returncode == 2 and "teacher.model" in res.stderr and "other-model" in res.stderr, res.stderr
    assert run.audit(run_id)["spent"]["queries"] == 30, "a refused resume must not touch the run"
    # Lowered below what is spent, the run stopped at once and failed every later audit for good.
    res = run.generate(run.write("less.toml", budget={"queries": 20}), "--run", run_id)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "has already spent 30 queries in its total budget" in res.stderr and "than the 20 now set" in res.stderr
    assert run.audit(run_id)["ok"]

    # A bigger budget, and a different teacher URL (where the same model is served), are fine.
    other = run.write("more.toml", budget={"queries": 50}, limits={"max_concurrency": 4})
    res = run.generate(other, "--run", run_id)
    assert res.returncode == 0, res.stderr
    assert last_line(res) == (run_id, "budget_exhausted")
    report = run.audit(run_id)
    assert report["spent"]["queries"] == 50 == server.stats()["answered"]
    assert len(assert_dataset_exact(run, run_id)) == 50


@pytest.mark.parametrize("damage, said", [
    ("DELETE FROM events WHERE seq = (SELECT min(seq) FROM events WHERE type = 'query_settled')", "sequence gap"),
    ("UPDATE events SET payload = replace(payload, '\"attempt\":1', '\"attempt\":2') "
     "WHERE seq = (SELECT max(seq) FROM events WHERE type = 'query_settled')", "hash chain broken"),
], ids=["removed", "edited"])
def test_a_resume_refuses_a_log_someone_damaged(make_run, damage, said):
    # It went on from the damaged fold (a settled answer gone from its budget and dataset), and
    # only a later `audit` said anything.
    run, server = make_run()
    res = run.generate(run.write(budget={"queries": 10}))
    run_id, _ = last_line(res)
    con = sqlite3.connect(run.dir / "store.db")
    con.execute(damage)
    con.commit()
    con.close()
    sent = server.stats()["received"]
    res = run.generate(run.write("more.toml", budget={"queries": 20}), "--run", run_id)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"run {run_id} cannot be resumed: its event log is damaged at seq" in res.stderr and said in res.stderr
    assert server.stats()["received"] == sent


def test_finished_run_exits_0_and_names_run_and_status(make_run):
    run, server = make_run()
    cfg = run.write(strategy={"name": "answer_augmentation", "samples_per_seed": 2}, budget={"queries": 100})
    res = run.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "completed"
    report = run.audit(run_id)
    # The two samples of a seed go out as one n=2 request: the server served 20 samples.
    assert report["spent"]["queries"] == 20 == server.stats()["choices"]
    # Resuming a completed run has nothing left to do and pays nothing.
    res = run.generate(cfg, "--run", run_id)
    assert res.returncode == 0 and last_line(res) == (run_id, "completed"), res.stderr
    assert server.stats()["choices"] == 20


def test_identical_queries_are_answered_from_the_store(make_run):
    # 4 distinct questions, each under 5 seed ids: 20 items per round, 4 distinct queries per round.
    questions = [q for q in QUESTIONS[:4] for _ in range(5)]
    run, server = make_run("--latency-ms", "30", questions=questions)
    cfg = run.write(strategy={"name": "answer_augmentation", "samples_per_seed": 3}, budget={"queries": 100},
                    limits={"max_concurrency": 16})
    res = run.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "completed"
    report = run.audit(run_id)
    # Samples served (3 per question, in one n=3 request each) = queries settled and paid.
    assert server.stats()["choices"] == 12 == report["counts"]["settled"] == report["spent"]["queries"]
    rows = assert_dataset_exact(run, run_id)
    assert len(rows) == 60
    by_query = Counter(r["metadata"]["query_ids"][0] for r in rows)
    assert len(by_query) == 12 and set(by_query.values()) == {5}


def test_ctrl_c_on_a_mix_whose_small_part_is_spent_is_an_interrupt_and_resume_finishes_it(make_run):
    # QA: a mix of answer augmentation (0.9) and new questions (0.1) stopped by Ctrl-C half way said
    # `budget_exhausted` (exit 0) as soon as its small part had spent its share; `--resume` then
    # found no unfinished run, and only `--run ID` went on.
    run, server = make_run("--latency-ms", "100")
    cfg = run.write(
        augmenter={"provider": "openai-compatible", "base_url": run.url + "/v1", "model": "aug-model",
                   "max_tokens": 48},
        strategy={"name": "mix", "parts": [{"name": "answer_augmentation", "fraction": 0.9},
                                           {"name": "new_question", "fraction": 0.1, "check_well_posed": False}]},
        limits={"max_concurrency": 4}, budget={"queries": 100})
    proc = run.popen_generate(cfg)
    # (the new questions' share of 10 is spent by then: 5 questions and their answers)
    wait_for(lambda: len(run.events("query_settled")) >= 75, 60, "most of the budget to settle", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, (out, err)
    run_id, status = last_line(subprocess.CompletedProcess([], 0, out, err))
    assert status == "interrupted", out
    res = run.generate(cfg, "--resume")
    assert res.returncode == 0, res.stderr
    assert last_line(res)[0] == run_id
    assert run.audit(run_id)["spent"]["queries"] == 100
