"""Data quality a user can see and filter: answers cut off at max_tokens, answers bought twice from
a teacher that ignores sampling, final answers that disagree with the seeds' references. Real runs
against the real test server, through the official SDKs where the provider has one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synthledger.engine.run.config import config_from_dict
from synthledger.engine.output.quality import data_quality, reason_kind
from synthledger.engine.run.launch import generate
from synthledger.store.eventstore import EventStore
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")
QUESTIONS = [f"Ann has {i} pens and buys 2 more. How many pens now?" for i in range(4)]


@pytest.fixture(autouse=True)
def no_keys(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("SYNTHLEDGER_STORE", None)
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def run_config(tmp_path: Path, provider: str, url: str, *, queries: int = 12, max_tokens: int = 64,
               **sections) -> dict:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": q, "answer": f"#### {i + 2}"}) + "\n"
                             for i, q in enumerate(QUESTIONS)))
    return {
        "run": {"name": f"dq-{provider}"},
        "seeds": {"source": "jsonl", "path": str(seeds)},
        "teacher": {"provider": provider, "base_url": url if provider == "anthropic" else url + "/v1",
                    "model": "test-teacher", "max_tokens": max_tokens},
        "limits": {"max_concurrency": 4, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
        "budget": {"queries": queries},
        "strategy": {"name": "answer_augmentation"},
        **sections,
    }


def events(store: EventStore, run_id: str, *types: str) -> list[dict]:
    return [e.payload for e in store.iter_events(run_id, types=list(types))]


def export(store_url: str, run_id: str, fmt: str, out: Path) -> list[dict]:
    r = cli("export", run_id, "--format", fmt, "--out", str(out), "--store", store_url)
    assert r.returncode == 0, r.stderr
    if fmt == "hf":
        import datasets

        return list(datasets.load_from_disk(str(out)))
    return [json.loads(line) for line in out.read_text().splitlines()]


# ---- 1. truncated answers ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai-compatible", "openai", "anthropic"])
def test_answers_cut_off_at_max_tokens_are_rejected_counted_and_exported_with_their_finish_reason(tmp_path, provider):
    # The server's replies are 24 or 33 words long: a 30-token cap cuts about two in three.
    url_db = f"sqlite:///{tmp_path / 's.db'}"
    store = EventStore(url_db)
    with run_in_thread() as srv:
        result = generate(config_from_dict(run_config(tmp_path, provider, srv.url, max_tokens=30)), store,
                          show_progress=False)
    run_id = result.run_id
    settled = events(store, run_id, "query_settled")
    cut = {p["query_id"] for p in settled if p["finish_reason"] == "length"}
    assert 0 < len(cut) < len(settled) and {p["finish_reason"] for p in settled} == {"stop", "length"}
    proposed = events(store, run_id, "sample_proposed")
    assert all(p["finish_reason"] == ("length" if p["query_ids"][0] in cut else "stop") for p in proposed)
    rejected = [p for p in events(store, run_id, "sample_rejected") if p.get("kind") == "truncated"]
    assert len(rejected) == len(cut) and all(p["stage"] == "quality" for p in rejected)
    assert rejected[0]["reason"] == "truncated: the teacher's answer reply was cut off at max_tokens"

    quality = data_quality(store, run_id)
    assert quality["overall"]["truncated"] == len(cut) and quality["overall"]["answers"] == len(settled)
    assert quality["strategies"]["answer_augmentation"]["roles"]["teacher"] == {
        "replies": len(settled), "truncated": len(cut), "truncation_rate": round(len(cut) / len(settled), 4)}
    groups = quality["overall"]["rejections"]
    assert {"stage": "quality", "kind": "truncated", "count": len(cut), "example": rejected[0]["reason"]} in groups

    accepted = len(settled) - len(cut)
    for fmt in ("jsonl", "chat", "hf"):
        rows = export(url_db, run_id, fmt, tmp_path / f"out.{fmt}")
        assert len(rows) == accepted
        reasons = [r["metadata"]["finish_reason"] if fmt == "chat" else r["finish_reason"] for r in rows]
        assert reasons == ["stop"] * accepted


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
def test_answers_a_safety_filter_stopped_are_rejected_even_with_keep_truncated(tmp_path, provider):
    # QA: OpenAI's finish_reason "content_filter" (text cut part way) and Anthropic's stop_reason
    # "refusal" were accepted and exported as training data, with no verifier to catch them.
    from synthledger.testing.server import ServerConfig

    url_db = f"sqlite:///{tmp_path / 's.db'}"
    store = EventStore(url_db)
    with run_in_thread(ServerConfig(refusal_rate=0.4)) as srv:
        cfg = run_config(tmp_path, provider, srv.url, queries=20, quality={"keep_truncated": True},
                         verifier={"name": "none"})
        result = generate(config_from_dict(cfg), store, show_progress=False)
    settled = events(store, result.run_id, "query_settled")
    stopped = {p["query_id"] for p in settled if p["finish_reason"] == "content_filter"}
    assert 0 < len(stopped) < len(settled)
    rejected = [p for p in events(store, result.run_id, "sample_rejected") if p.get("kind") == "filtered"]
    assert sorted(p["details"]["query_id"] for p in rejected) == sorted(stopped)
    rows = export(url_db, result.run_id, "jsonl", tmp_path / "out.jsonl")
    assert len(rows) == len(settled) - len(stopped) and all(r["finish_reason"] == "stop" for r in rows)


@pytest.mark.parametrize("keep", [False, True])
def test_a_question_a_safety_filter_stopped_is_rejected_before_the_teacher_answers_it(tmp_path, keep):
    # A rephrase cut short at max_tokens was rejected at once; one a content filter stopped was
    # admitted, answered (paid), and only then rejected as filtered (QA).
    from synthledger.testing.server import ServerConfig

    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread(ServerConfig(refusal_rate=0.4)) as srv:
        cfg = run_config(tmp_path, "openai-compatible", srv.url, queries=30, quality={"keep_truncated": keep},
                         verifier={"name": "none"}, strategy={"name": "question_rephrase"})
        result = generate(config_from_dict(cfg), store, show_progress=False)
    rows = [(e.type, e.payload) for e in store.iter_events(result.run_id)]
    reserved = {p["query_id"]: p for t, p in rows if t == "query_reserved"}
    stopped_items = {reserved[p["query_id"]]["item"] for t, p in rows
                     if t == "query_settled" and p["finish_reason"] == "content_filter"
                     and reserved[p["query_id"]]["purpose"] == "rephrase"}
    assert stopped_items, "no rephrase was stopped by the filter"
    for t, p in rows:
        if t == "query_reserved" and p["item"] in stopped_items:
            assert p["purpose"] == "rephrase", p  # nothing more was asked for the item
        if t == "question_admitted":
            assert p["item"] not in stopped_items, p
    kinds = {p["item"]: p.get("kind") for t, p in rows if t == "sample_rejected" and p["item"] in stopped_items}
    assert set(kinds) == stopped_items and set(kinds.values()) == {"filtered"}, kinds


def test_keep_truncated_keeps_them_and_says_so_in_every_format(tmp_path):
    url_db = f"sqlite:///{tmp_path / 's.db'}"
    store = EventStore(url_db)
    with run_in_thread() as srv:
        cfg = run_config(tmp_path, "openai-compatible", srv.url, max_tokens=30, quality={"keep_truncated": True})
        result = generate(config_from_dict(cfg), store, show_progress=False)
    cut = sum(p["finish_reason"] == "length" for p in events(store, result.run_id, "query_settled"))
    assert cut > 0
    for fmt in ("jsonl", "chat", "hf"):
        rows = export(url_db, result.run_id, fmt, tmp_path / f"out.{fmt}")
        reasons = [r["metadata"]["finish_reason"] if fmt == "chat" else r["finish_reason"] for r in rows]
        assert len(rows) == 12 and reasons.count("length") == cut


# ---- 2. exact-duplicate answers and a teacher that ignores sampling ------------------------------


def test_a_greedy_teacher_buys_copies_which_are_rejected_and_said_once(tmp_path):
    with run_in_thread(greedy=True) as srv:
        config = write_project(tmp_path, srv.url, name="greedy", seeds=4, queries=16)
        r = cli("generate", "-c", str(config), "--no-progress", "--store", f"sqlite:///{tmp_path / 's.db'}",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = " ".join(r.stderr.split())
    assert log.count("the teacher seems to ignore sampling") == 1  # said once, with what to change
    assert "12 of 12 repeat answers to the same question were exact copies" in log
    assert "honours temperature" in log and "question_rephrase or new_question" in log
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.resolve("greedy").id
    duplicates = [p for p in events(store, run_id, "sample_rejected") if p.get("kind") == "duplicate"]
    assert len(duplicates) == 12 and all(p["reason"].startswith("duplicate: the same answer") for p in duplicates)
    warnings = events(store, run_id, "run_warning")  # (the server knows no answers: agreement is low too)
    assert [w["kind"] for w in warnings].count("sampling_ignored") == 1
    assert len(export(f"sqlite:///{tmp_path / 's.db'}", run_id, "jsonl", tmp_path / "o.jsonl")) == 4
    quality = data_quality(store, run_id)["overall"]
    assert (quality["duplicates"], quality["duplicate_rate"]) == (12, 0.75)
    assert any(w["kind"] == "sampling_ignored" and "ignore sampling" in w["message"]
               for w in data_quality(store, run_id)["warnings"])


def test_a_sampling_teacher_gets_no_duplicate_rejections_and_no_warning(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread() as srv:
        result = generate(config_from_dict(run_config(tmp_path, "openai-compatible", srv.url, queries=16)), store,
                          show_progress=False)
    assert not [p for p in events(store, result.run_id, "sample_rejected") if p.get("kind") == "duplicate"]
    assert not [w for w in events(store, result.run_id, "run_warning") if w["kind"] == "sampling_ignored"]
    assert data_quality(store, result.run_id)["overall"]["duplicates"] == 0


def test_keep_duplicate_answers_keeps_them_but_still_counts_them(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread(greedy=True) as srv:
        cfg = run_config(tmp_path, "openai-compatible", srv.url, queries=8, quality={"keep_duplicate_answers": True})
        result = generate(config_from_dict(cfg), store, show_progress=False)
    assert len(events(store, result.run_id, "sample_accepted")) == 8
    assert data_quality(store, result.run_id)["overall"]["duplicates"] == 4


def test_a_resumed_run_still_knows_the_answers_and_warnings_of_earlier_sessions(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread(greedy=True) as srv:
        first = generate(config_from_dict(run_config(tmp_path, "openai-compatible", srv.url, queries=8)), store,
                         show_progress=False)
        more = run_config(tmp_path, "openai-compatible", srv.url, queries=16)  # a resume may raise the budget
        second = generate(config_from_dict(more), store, run_id=first.run_id, show_progress=False)
    assert second.run_id == first.run_id
    assert len(events(store, first.run_id, "sample_accepted")) == 4  # one answer per question, ever
    assert [w["kind"] for w in events(store, first.run_id, "run_warning")].count("sampling_ignored") == 1


def greedy_run_said_once(tmp_path: Path, url: str, kind: str, **project) -> tuple[str, str]:
    """An 80-query CLI run against a teacher that ignores temperature, which must record the run
    warning `kind` once, before its last settlement (while the budget was still there); returns
    the run's stderr on one line, and its id."""
    with run_in_thread(greedy=True) as srv:
        config = write_project(tmp_path, srv.url, queries=80, **project)
        r = cli("generate", "-c", str(config), "--no-progress", "--store", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    store = EventStore(url)
    run_id = store.resolve(project["name"]).id
    warned = [e for e in store.iter_events(run_id, types=["run_warning"]) if e.payload["kind"] == kind]
    last_settled = max(e.seq for e in store.iter_events(run_id, types=["query_settled"]))
    assert len(warned) == 1 and warned[0].seq < last_settled, (warned, last_settled)
    return " ".join(r.stderr.split()), run_id


def test_a_greedy_augmenter_writing_the_same_questions_is_said_once_while_the_run_goes_on(tmp_path):
    """Rephrasing a seed greedily gives the same question every time: each is paid for, then dropped
    by [dedupe]. Nothing said so but a rejection count in `show` afterwards."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    log, run_id = greedy_run_said_once(tmp_path, url, "questions_repeated", name="greedy-qr", seeds=8,
                                       strategy="question_rephrase")
    assert log.count("new questions were exact copies of a question written before") == 1, log
    found = re.search(r"(\d+) of the first 50 new questions were exact copies", log)
    assert found and int(found[1]) >= 40  # 8 seeds, one rephrasing each, then copies
    assert "honours temperature" in log
    shown = " ".join(cli("show", run_id, "--store", url).stdout.split())
    assert shown.count("new questions were exact copies") == 1


def test_a_sampling_augmenter_is_not_said_to_repeat_itself(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread() as srv:
        for strategy in ("question_rephrase", "new_question"):
            cfg = run_config(tmp_path, "openai-compatible", srv.url, queries=60, strategy={"name": strategy})
            cfg["run"]["name"] = strategy
            result = generate(config_from_dict(cfg), store, show_progress=False)
            kinds = [w["kind"] for w in events(store, result.run_id, "run_warning")]
            assert "questions_repeated" not in kinds, (strategy, kinds)


def test_self_consistency_votes_that_copy_the_answer_are_said_once_while_the_run_goes_on(tmp_path):
    """A greedy teacher votes for its own answer with the same text every time: each vote is paid
    for, self-consistency accepts every sample, and nothing said so (52 votes for 14 samples)."""
    log, _ = greedy_run_said_once(tmp_path, f"sqlite:///{tmp_path / 's.db'}", "votes_copied", name="greedy-sc",
                                  seeds=20, extra='[verifier]\nname = "self_consistency"\nk = 4\n')
    assert log.count("verifier votes were exact copies of the answer they check") == 1, log
    assert "50 of the first 50 verifier votes" in log and "honours temperature" in log


def test_a_vote_cut_off_at_the_verifiers_max_tokens_is_no_answer_and_its_setting_is_named(tmp_path):
    """A vote cut off ("Step 1: Read the question and note the quantities 60") counted as a vote for
    its last number, so samples were rejected for disagreeing with a "majority" of fragments; and the
    warning told the user to raise the teacher's max_tokens, which was not the one cutting them off."""
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread() as srv:
        cfg = run_config(tmp_path, "openai-compatible", srv.url, queries=60,
                         verifier={"name": "self_consistency", "k": 3, "max_tokens": 12})
        result = generate(config_from_dict(cfg), store, show_progress=False)
    verdicts = [p for p in events(store, result.run_id, "sample_rejected", "sample_accepted")
                if "votes" in (p.get("details") or {})]
    assert verdicts, "no verdict with votes"
    for p in verdicts:  # every vote was cut off: only the sample's own answer is counted
        assert set(p["details"]["votes"]) <= {p["details"]["own"]}, p
    said = [w["message"] for w in events(store, result.run_id, "run_warning") if w["kind"] == "truncated_replies"]
    assert said and "the verifier's votes, each counted as no answer: raise [verifier] max_tokens" in said[0], said
    assert "Raise max_tokens for the teacher" not in said[0], said


def test_sampled_votes_and_a_judges_verdicts_are_not_said_to_be_copies(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread() as srv:
        cfg = run_config(tmp_path, "openai-compatible", srv.url, queries=60,
                         verifier={"name": "self_consistency", "k": 4})
        result = generate(config_from_dict(cfg), store, show_progress=False)
    kinds = [w["kind"] for w in events(store, result.run_id, "run_warning")]
    assert len(events(store, result.run_id, "sample_proposed")) >= 10 and "votes_copied" not in kinds, kinds
    from synthledger.engine.run.quality_gate import MIN_VOTES, QualityGate, Reply
    said = []
    gate = QualityGate(None, warn=lambda kind, message: said.append(kind))  # type: ignore[arg-type]
    for i in range(20):  # a judge's verdicts are alike by design: only "verify" replies are votes
        gate.observe_replies([Reply(f"a{i}", "teacher", "answer", "stop", f"answer {i}"),
                              Reply(f"j{i}", "teacher", "judge", "stop", "YES")])
    gate.observe_replies([Reply("a", "teacher", "answer", "stop", "x"),
                          *[Reply(f"v{i}", "teacher", "verify", "stop", "x") for i in range(MIN_VOTES - 1)]])
    gate.finish()
    assert said == [] and gate.copied_votes == MIN_VOTES - 1  # too few votes to judge
    gate.observe_replies([Reply("b", "teacher", "answer", "stop", "y"), Reply("w", "teacher", "verify", "stop", "y ")])
    gate.finish()
    assert said == ["votes_copied"]


# ---- 3. the data-quality section of `show` -------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """A mix (answer augmentation + rephrase, so two roles) whose teacher is wrong 3 times in 4,
    verified against the references: low agreement, grouped verification rejections."""
    tmp = tmp_path_factory.mktemp("dq")
    answers = {q: str(i + 2) for i, q in enumerate(QUESTIONS)}
    with run_in_thread(answers=answers, wrong_rate=0.75, seed=3) as srv:
        cfg = run_config(tmp, "openai-compatible", srv.url, queries=24,
                         strategy={"name": "mix", "parts": [{"name": "answer_augmentation", "fraction": 0.5},
                                                            {"name": "question_rephrase", "fraction": 0.5}]},
                         verifier={"name": "final_answer"}, dedupe={"enabled": False})
        cfg["run"]["name"] = "mixed"
        (tmp / "run.toml").write_text("")  # the store lives beside it
        url = f"sqlite:///{tmp / 's.db'}"
        result = generate(config_from_dict(cfg), EventStore(url), show_progress=False)
    return url, result.run_id


def test_data_quality_per_strategy_and_role(mixed_run):
    url, run_id = mixed_run
    quality = data_quality(EventStore(url), run_id)
    aa, qr = quality["strategies"]["answer_augmentation"], quality["strategies"]["question_rephrase"]
    assert set(aa["roles"]) == {"teacher"} and set(qr["roles"]) == {"teacher", "augmenter"}
    for part in (aa, qr):
        assert part["with_reference"] == part["answers"] - part["truncated"] > 0
        assert part["agreement"] == round(part["agreeing"] / part["answers"], 4) < 0.5
    overall = quality["overall"]
    assert overall["answers"] == aa["answers"] + qr["answers"]
    assert overall["agreeing"] == aa["agreeing"] + qr["agreeing"] == overall["accepted"]
    kinds = {(g["stage"], g["kind"]): g for g in overall["rejections"]}
    wrong = kinds[("verification", "final answer differs from reference")]
    assert wrong["count"] == overall["with_reference"] - overall["agreeing"]
    assert re.fullmatch(r"final answer \d+ differs from reference \d+", wrong["example"])
    assert any(w["kind"] == "low_agreement" and w["message"].startswith(
        "low agreement: the teacher's final answers agree with the seeds' references in only ") for w in quality["warnings"])


def test_show_prints_tables_grouped_rejections_and_the_warning(mixed_run):
    url, run_id = mixed_run
    r = cli("show", run_id, "--store", url)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "data quality" in text and "rejections" in text and "┃ strategy" in text
    assert text.count("final answer differs from reference") == 1  # one group, not one line per rejection
    assert re.search(r"final answer differs from reference │ \d+ +│ final answer \d+ differs from reference \d+", text)
    assert "warning: low agreement" in text
    assert "None" not in text and "{'" not in text
    shown = json.loads(cli("show", run_id, "--json", "--store", url).stdout)
    assert shown["data_quality"] == data_quality(EventStore(url), run_id)


def test_reason_kinds_drop_the_particulars():
    assert reason_kind("final answer 520 differs from reference 9") == "final answer differs from reference"
    assert reason_kind("near duplicate (jaccard 0.91) of seed s12") == "near duplicate"
    assert reason_kind("exact duplicate of question 3") == "exact duplicate"
    assert reason_kind("no clear majority: 4 has 2/5 < 0.6") == "no clear majority"
    assert reason_kind("server_error after 6 attempt(s): HTTP 503: busy") == "server_error after attempt"
    assert reason_kind("anything at all", "truncated") == "truncated"


# ---- 4. many replies cut off: said while the run spends, once -----------------------------------


def test_many_cut_off_replies_are_said_while_the_run_goes_on_once_and_once_in_show(tmp_path):
    """Every cut-off reply is paid for, then thrown away: the first 50 replies decide a warning the
    live view prints while the budget is still there, not only `show` afterwards."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    with run_in_thread() as srv:
        cfg = write_project(tmp_path, srv.url, name="cut", seeds=8, queries=80, max_tokens=30)
        r = cli("generate", "-c", str(cfg), "--no-progress", "--store", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = " ".join(r.stderr.split())
    assert log.count("cut off at max_tokens: each is paid for, then rejected.") == 1, log
    assert re.search(r"\d+ of the first 50 teacher replies were cut off", log), log
    assert "Raise max_tokens for the teacher in the config" in log
    store = EventStore(url)
    run_id = store.list_runs()[0].id
    seqs = {e.type: e.seq for e in store.iter_events(run_id) if e.type in ("run_warning", "query_settled")}
    warned = [e for e in store.iter_events(run_id, types=["run_warning"]) if e.payload["kind"] == "truncated_replies"]
    assert len(warned) == 1 and warned[0].seq < seqs["query_settled"]  # said before the last answer came back
    shown = cli("show", run_id, "--store", url).stdout
    assert " ".join(shown.split()).count("replies were cut off at max_tokens") == 1  # the whole run's figure only


def test_a_short_run_is_judged_at_its_end_and_whole_replies_say_nothing(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread() as srv:
        short = generate(config_from_dict(run_config(tmp_path, "openai-compatible", srv.url, max_tokens=30)), store,
                         show_progress=False)
        whole = generate(config_from_dict({**run_config(tmp_path, "openai-compatible", srv.url, max_tokens=256),
                                           "run": {"name": "whole"}}), store, show_progress=False)
    assert [w["kind"] for w in events(store, short.run_id, "run_warning")] == ["truncated_replies"]
    assert not [w for w in events(store, whole.run_id, "run_warning") if w["kind"] == "truncated_replies"]


def test_the_cut_off_warning_counts_each_role_and_needs_enough_replies():
    from synthledger.engine.run.quality_gate import WINDOW, QualityGate, Reply

    said: list[tuple[str, str]] = []
    gate = QualityGate(object(), warn=lambda kind, message: said.append((kind, message)))  # type: ignore[arg-type]
    gate.observe_replies([Reply("a", "augmenter", "rewrite", "length")] * 9)  # too few to judge alone
    gate.observe_replies([Reply(f"t{i}", "teacher", "answer", "stop") for i in range(WINDOW - 10)])
    assert not said
    gate.observe_replies([Reply("x", "teacher", "answer", "stop")] * 5)  # the window closes: judged now
    assert not said  # 9 augmenter replies are too few, and no teacher reply was cut off
    gate = QualityGate(object(), warn=lambda kind, message: said.append((kind, message)))  # type: ignore[arg-type]
    gate.observe_replies([Reply("a", "augmenter", "rewrite", "length")] * 10 + [Reply("t", "teacher", "answer", "stop")])
    gate.finish()
    gate.finish()
    assert said == [("truncated_replies", said[0][1])] and "10 of the first 10 augmenter replies" in said[0][1]
    assert "teacher" not in said[0][1]


def test_the_repeated_questions_warning_counts_exact_copies_only_and_needs_enough_questions():
    from synthledger.engine.run.quality_gate import QualityGate

    said: list[str] = []
    gate = QualityGate(object(), warn=lambda kind, message: said.append(kind))  # type: ignore[arg-type]
    for _ in range(9):
        gate.observe_question("exact duplicate of question of qr:1:0")
    gate.finish()
    assert not said  # 9 questions are too few to judge
    gate = QualityGate(object(), warn=lambda kind, message: said.append(kind))  # type: ignore[arg-type]
    for i in range(36):  # near duplicates of seeds are the augmenter being unoriginal, not greedy
        gate.observe_question("near duplicate (jaccard 0.91) of seed s1" if i % 2 else None)
    gate.finish()
    assert not said
    for _ in range(13):
        gate.observe_question("exact duplicate of seed s3")
    assert not said  # 13 of 49 (27%), but the window is still open
    gate.observe_question(None)
    assert said == ["questions_repeated"]  # 13 of 50: the window closed and judged
    for _ in range(50):
        gate.observe_question("exact duplicate of seed s3")
    gate.finish()
    assert said == ["questions_repeated"]  # once
