"""Each strategy family through the real engine against the real test server: exact spend per role,
resume after kill -9 without duplicates or gaps, and exported rows that `datasets` loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthledger.engine.run.config import config_from_dict
from synthledger.engine.run.launch import generate
from synthledger.store.eventstore import EventStore
from synthledger.testing.server import ServerConfig, run_in_thread

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "cli.py")]


def seeds_file(tmp: Path, n: int = 12) -> Path:
    path = tmp / "seeds.jsonl"
    with path.open("w") as f:
        for i in range(n):
            a, b = 3 + i, 2 * i + 1
            f.write(json.dumps({"id": f"s{i}", "question": f"A shop has {a} red boxes and {b} blue boxes of "
                                f"size {i}. How many boxes are there in all?", "answer": f"#### {a + b}"}) + "\n")
    return path


# A mix of answer augmentation and new questions in halves (no well-posedness check: one query each).
HALVES_AA_NQ = {"name": "mix", "parts": [{"name": "answer_augmentation", "fraction": 0.5},
                                         {"name": "new_question", "fraction": 0.5, "check_well_posed": False}]}


def config(tmp: Path, url: str, strategy: dict, budget: dict, **extra) -> dict:
    cfg = {
        "run": {"name": f"e2e-{strategy['name']}", "store": f"sqlite:///{tmp / 'store.db'}"},
        "seeds": {"source": "jsonl", "path": str(seeds_file(tmp))},
        "teacher": {"provider": "openai-compatible", "base_url": url + "/v1", "model": "teacher-m",
                    "max_tokens": 64},
        "limits": {"max_concurrency": 16, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
        "budget": budget,
        "strategy": strategy,
    }
    cfg.update(extra)
    return cfg


def audit(store_url: str, run_id: str) -> dict:
    out = subprocess.run(CLI + ["audit", run_id, "--json", "--store", store_url], capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"], report["violations"]
    return report


def _toml_value(v) -> str:
    """A config value as TOML, lists of inline tables included (a mix's parts)."""
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml_value, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def rows(store_url: str, run_id: str, tmp: Path, fmt: str = "jsonl") -> list[dict]:
    out = tmp / f"export.{fmt}"
    subprocess.run(CLI + ["export", run_id, "--format", fmt, "--out", str(out), "--store", store_url], check=True,
                   capture_output=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("strategy, expected_roles", [
    ({"name": "answer_augmentation"}, {"teacher"}),
    ({"name": "question_rephrase"}, {"augmenter", "teacher"}),
    ({"name": "new_question", "check_well_posed": True}, {"augmenter", "teacher"}),
    ({"name": "mix", "parts": [{"name": "answer_augmentation", "fraction": 0.4},
                               {"name": "new_question", "fraction": 0.6}]}, {"augmenter", "teacher"}),
])
def test_each_strategy_spends_exactly_its_budget(tmp_path, strategy, expected_roles):
    with run_in_thread(ServerConfig(latency_ms=2)) as srv:
        cfg = config_from_dict(config(tmp_path, srv.url, strategy, {"queries": 60}))
        result = generate(cfg, show_progress=False)
        answered = srv.stats()["answered"]
    assert result.status == "budget_exhausted"
    report = audit(cfg.run.store, result.run_id)
    assert report["spent"]["queries"] == 60 == answered
    assert set(report["by_role"]) == expected_roles
    if strategy["name"] == "mix":  # each part gets its share of the budget, exactly
        assert report["by_strategy"]["answer_augmentation"]["queries"] == 24
        assert report["by_strategy"]["new_question"]["queries"] == 36
    data = rows(cfg.run.store, result.run_id, tmp_path)
    assert data and len({r["sample_id"] for r in data}) == len(data)
    assert all(r["query_ids"] and r["strategy"] != "mix" for r in data)


def test_per_role_limits_and_counted_roles(tmp_path):
    budget = {"queries": 30, "counted_roles": ["teacher"], "roles": {"augmenter": {"queries": 50}}}
    with run_in_thread(ServerConfig()) as srv:
        cfg = config_from_dict(config(tmp_path, srv.url, {"name": "question_rephrase"}, budget))
        result = generate(cfg, show_progress=False)
    report = audit(cfg.run.store, result.run_id)
    by_role = report["by_role"]
    assert by_role["teacher"]["queries"] == 30  # only the teacher counts against `queries`
    assert by_role["augmenter"]["queries"] <= 50


@pytest.mark.parametrize("augmenter_limit", [None, 50])
def test_an_augmenter_no_limit_counts_cannot_spend_without_end(tmp_path, augmenter_limit):
    # Q counts teacher answers only (the paper's setting) and every rewrite is refused before the
    # teacher is asked: nothing ended the run, which paid the augmenter ~500 queries a second until killed.
    budget = {"queries": 10, "counted_roles": ["teacher"]}
    if augmenter_limit:
        budget["roles"] = {"augmenter": {"queries": augmenter_limit}}
    strategy = {"name": "question_rephrase", "rephrase_template": "Repeat: {question}"}
    # A server that refuses everything after 3000 requests ends a runaway run (five 400s in a row) instead of the test.
    with run_in_thread(ServerConfig(max_requests=3000, exhausted_status=400)) as srv:
        raw = config(tmp_path, srv.url, strategy, budget)
        raw["augmenter"] = {**raw["teacher"], "model": "augmenter-m"}
        cfg = config_from_dict(raw)
        result = generate(cfg, show_progress=False)
        answered = srv.stats()["answered"]
    if augmenter_limit:  # a limit of its own ends it, as before
        assert result.status == "budget_exhausted" and answered == augmenter_limit
    else:
        assert result.status == "failed" and "paid only for roles no budget limit counts" in result.message
        assert 1000 <= answered < 1100


def test_mix_shares_count_only_the_counted_roles(tmp_path):
    # Q counts teacher answers only: each part's share is that many teacher answers, and a question
    # part's augmenter calls must not use up its share (they did: the mix ended with Q a third unspent).
    budget = {"queries": 30, "counted_roles": ["teacher"]}
    strategy = HALVES_AA_NQ
    with run_in_thread(ServerConfig()) as srv:
        cfg = config_from_dict(config(tmp_path, srv.url, strategy, budget))
        result = generate(cfg, show_progress=False)
    report = audit(cfg.run.store, result.run_id)
    assert result.status == "budget_exhausted"
    assert report["spent"]["queries"] == report["by_role"]["teacher"]["queries"] == 30
    reserved = [e.payload for e in EventStore(cfg.run.store).iter_events(result.run_id, types=["query_reserved"])]
    teacher = {name: sum(1 for p in reserved if p["role"] == "teacher" and p["strategy"] == name)
               for name in ("answer_augmentation", "new_question")}
    assert teacher == {"answer_augmentation": 15, "new_question": 15}


def test_mix_shares_add_up_to_the_whole_budget(tmp_path):
    # Shares were rounded down each: Q = 21 in halves gave 10 + 10, and the run ended with a query unspent.
    strategy = HALVES_AA_NQ
    with run_in_thread(ServerConfig()) as srv:
        cfg = config_from_dict(config(tmp_path, srv.url, strategy, {"queries": 21}))
        result = generate(cfg, show_progress=False)
    report = audit(cfg.run.store, result.run_id)
    assert result.status == "budget_exhausted" and report["spent"]["queries"] == 21
    assert {k: v["queries"] for k, v in report["by_strategy"].items()} == {"answer_augmentation": 11,
                                                                          "new_question": 10}


def test_a_mix_whose_finite_part_ended_stops_when_the_other_share_is_spent(tmp_path):
    # answer_augmentation with samples_per_seed ends its plan before its share; once new_question's
    # share was spent the run skipped its endless items without a pause: it never ended, an answer
    # stayed unsettled, memory grew, and SIGTERM went unheard.
    strategy = {"name": "mix", "parts": [{"name": "answer_augmentation", "fraction": 0.5, "samples_per_seed": 1},
                                         {"name": "new_question", "fraction": 0.5, "check_well_posed": False}]}
    with run_in_thread(ServerConfig()) as srv:
        cfg = config(tmp_path, srv.url, strategy, {"queries": 30})
        (tmp_path / "run.toml").write_text("".join(
            f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in section.items()) for name, section in cfg.items()))
        out = subprocess.run(CLI + ["generate", "-c", str(tmp_path / "run.toml"), "--no-progress"],
                             capture_output=True, text=True, timeout=60)  # killed, and failed, if it hangs
    assert out.returncode == 0, out.stderr
    report = audit(cfg["run"]["store"], "e2e-mix")
    assert report["status"] == "budget_exhausted"
    # (answer_augmentation ended at 12 of its 15: new_question spends the 3 it left, see below)
    assert {k: v["queries"] for k, v in report["by_strategy"].items()} == {"answer_augmentation": 12,
                                                                          "new_question": 18}


def _teacher_queries(store_url: str, run_id: str) -> dict[str, int]:
    """Teacher queries reserved per strategy (what counted_roles = ["teacher"] counts)."""
    out: dict[str, int] = {}
    for ev in EventStore(store_url).iter_events(run_id, types=["query_reserved"]):
        if ev.payload["role"] == "teacher":
            out[ev.payload["strategy"]] = out.get(ev.payload["strategy"], 0) + 1
    return out


def _hand_overs(store_url: str, run_id: str) -> list[dict]:
    return [e.payload for e in EventStore(store_url).iter_events(run_id, types=["share_handed_over"])]


@pytest.mark.parametrize("other", [{"name": "question_rephrase"},
                                   {"name": "new_question", "check_well_posed": False}])
def test_a_mix_part_that_ended_under_its_share_hands_the_rest_to_the_other(tmp_path, other):
    # Q = 30 teacher answers in halves, 6 seeds: answer augmentation with samples_per_seed = 1 plans
    # 6 items and ended there; its 9 unspent queries were never used (21 of 30 spent).
    strategy = {"name": "mix", "parts": [{"name": "answer_augmentation", "fraction": 0.5, "samples_per_seed": 1},
                                         {**other, "fraction": 0.5}]}
    budget = {"queries": 30, "counted_roles": ["teacher"]}
    with run_in_thread(ServerConfig()) as srv:
        raw = config(tmp_path, srv.url, strategy, budget)
        raw["seeds"]["path"] = str(seeds_file(tmp_path, 6))
        cfg = config_from_dict(raw)
        result = generate(cfg, show_progress=False)
        answered = srv.stats()["answered"]
    report = audit(cfg.run.store, result.run_id)
    assert result.status == "budget_exhausted", result.message
    assert report["spent"]["queries"] == report["by_role"]["teacher"]["queries"] == 30
    assert answered == 30 + report["by_role"]["augmenter"]["queries"]  # paid once each
    assert _teacher_queries(cfg.run.store, result.run_id) == {"answer_augmentation": 6, other["name"]: 24}
    [handed] = _hand_overs(cfg.run.store, result.run_id)
    assert (handed["strategy"], handed["spent"]["queries"], handed["to"]) == ("answer_augmentation", 6,
                                                                             {other["name"]: 0.5})


def test_a_mix_whose_parts_all_end_under_their_shares_completes(tmp_path):
    # The one case where a run spends less than its budget: every part's plan ended. The first to end
    # handed its rest to the other, which ended too; nobody is left to take the last rest.
    strategy = {"name": "mix", "parts": [{"name": "answer_augmentation", "fraction": 0.5, "samples_per_seed": 1},
                                         {"name": "question_rephrase", "fraction": 0.5, "rephrases_per_seed": 1}]}
    with run_in_thread(ServerConfig()) as srv:
        raw = config(tmp_path, srv.url, strategy, {"queries": 30})
        raw["seeds"]["path"] = str(seeds_file(tmp_path, 6))
        cfg = config_from_dict(raw)
        result = generate(cfg, show_progress=False)
    report = audit(cfg.run.store, result.run_id)
    assert result.status == "completed", result.message
    assert {k: v["queries"] for k, v in report["by_strategy"].items()} == {"answer_augmentation": 6,
                                                                          "question_rephrase": 12}
    assert len(_hand_overs(cfg.run.store, result.run_id)) <= 1


def test_augmenter_can_be_another_model(tmp_path):
    with run_in_thread(ServerConfig()) as srv:
        raw = config(tmp_path, srv.url, {"name": "new_question", "check_well_posed": False}, {"queries": 20})
        raw["augmenter"] = {**raw["teacher"], "model": "augmenter-m", "temperature": 1.0}
        cfg = config_from_dict(raw)
        result = generate(cfg, show_progress=False)
    report = audit(cfg.run.store, result.run_id)
    assert set(report["by_model"]) == {"teacher-m", "augmenter-m"}
    assert report["spent"]["queries"] == 20


def test_a_rephrase_keeping_its_seeds_answer_is_not_credited_to_the_augmenter(tmp_path):
    # reuse_seed_answer: the answer is the seed's own and the rewrite is the sample's only query; the
    # export said role "augmenter", model "augmenter-m", as if that model had written the answer.
    strategy = {"name": "question_rephrase", "reuse_seed_answer": True}
    with run_in_thread(ServerConfig()) as srv:
        raw = config(tmp_path, srv.url, strategy, {"queries": 6})
        raw["augmenter"] = {**raw["teacher"], "model": "augmenter-m"}
        cfg = config_from_dict(raw)
        result = generate(cfg, show_progress=False)
    seeds = {str(n): json.loads(line) for n, line in enumerate(seeds_file(tmp_path).read_text().splitlines(), 1)}
    data = rows(cfg.run.store, result.run_id, tmp_path)
    assert len(data) == 6
    for row in data:
        assert row["answer"] == seeds[row["seed_id"]]["answer"]
        assert (row["role"], row["model"]) == ("seed", None), row
        assert row["models"] == {"augmenter": "augmenter-m"} and len(row["query_ids"]) == 1
    # Nor is the seed's own answer counted as agreeing with its reference (it is that reference):
    # `show` read 100% agreement for a run whose teacher answered nothing.
    from synthledger.engine.output.quality import data_quality

    quality = data_quality(EventStore(cfg.run.store), result.run_id)
    assert (quality["overall"]["with_reference"], quality["overall"]["agreeing"]) == (0, 0), quality["overall"]


def test_near_duplicates_are_rejected_before_they_are_answered(tmp_path):
    # A rephrase template that makes the test server's augmenter echo the seed: every "rewrite" is an
    # exact duplicate of its seed, so it must be rejected before the teacher is asked anything.
    strategy = {"name": "question_rephrase", "rephrase_template": "Repeat: {question}"}
    with run_in_thread(ServerConfig()) as srv:
        cfg = config_from_dict(config(tmp_path, srv.url, strategy, {"queries": 10}))
        result = generate(cfg, show_progress=False)
    st = EventStore(cfg.run.store)
    rejected = [e.payload for e in st.iter_events(result.run_id, types=["sample_rejected"])]
    reserved = [e.payload for e in st.iter_events(result.run_id, types=["query_reserved"])]
    dup_items = {r["item"] for r in rejected if "duplicate" in r["reason"]}
    teacher_items = {r["item"] for r in reserved if r["role"] == "teacher"}
    assert not (dup_items & teacher_items)
    assert len(dup_items) == 10 and not teacher_items  # the whole budget went to (rejected) rewrites


def test_a_rephrase_that_copies_its_seed_is_refused_with_dedupe_off(tmp_path):
    # With [dedupe] off the echoed seed went through as a "rephrase", its answer the same query every
    # round (one paid answer exported three times, and the seed question under the rephrase's name).
    strategy = {"name": "question_rephrase", "rephrase_template": "Repeat: {question}", "rephrases_per_seed": 3}
    with run_in_thread(ServerConfig()) as srv:
        cfg = config_from_dict(config(tmp_path, srv.url, strategy, {"queries": 12}, dedupe={"enabled": False}))
        result = generate(cfg, show_progress=False)
    st = EventStore(cfg.run.store)
    rejected = [e.payload for e in st.iter_events(result.run_id, types=["sample_rejected"])]
    reserved = [e.payload for e in st.iter_events(result.run_id, types=["query_reserved"])]
    assert len(rejected) == 12 and {(r["stage"], r["reason"]) for r in rejected} == {
        ("rephrase", "augmenter copied a seed question")}
    assert not [r for r in reserved if r["role"] == "teacher"]
    assert rows(cfg.run.store, result.run_id, tmp_path) == []


@pytest.mark.parametrize("strategy", [{"name": "question_rephrase"}, {"name": "new_question"}])
def test_a_question_cut_off_is_rejected_before_the_teacher_answers_it(tmp_path, strategy):
    # The gate rejects a sample with any reply cut off at max_tokens, but only after the teacher had
    # answered the cut-off question (and the check judged it): a budget spent on answers all rejected.
    with run_in_thread(ServerConfig()) as srv:
        raw = config(tmp_path, srv.url, strategy, {"queries": 8})
        raw["augmenter"] = {**raw["teacher"], "model": "augmenter-m", "max_tokens": 3}
        cfg = config_from_dict(raw)
        result = generate(cfg, show_progress=False)
    st = EventStore(cfg.run.store)
    reserved = [e.payload for e in st.iter_events(result.run_id, types=["query_reserved"])]
    rejected = [e.payload for e in st.iter_events(result.run_id, types=["sample_rejected"])]
    assert len(reserved) == 8 and {r["role"] for r in reserved} == {"augmenter"}
    assert len(rejected) == 8 and {(r["stage"], r["kind"]) for r in rejected} == {("quality", "truncated")}
    assert rejected[0]["reason"] == f"truncated: the augmenter's {reserved[0]['purpose']} reply was cut off at max_tokens"


def test_a_question_written_again_with_dedupe_off_is_not_exported_twice(tmp_path):
    # A greedy augmenter writes each seed's rewrite again in round 2; with [dedupe] off the teacher's
    # answer to it is the same query, free, and its row was exported twice (the gate let a same-query
    # answer through, meant for two seeds that share one question).
    strategy = {"name": "question_rephrase", "rephrases_per_seed": 2}
    with run_in_thread(ServerConfig(greedy=True)) as srv:
        cfg = config_from_dict(config(tmp_path, srv.url, strategy, {"queries": 100}, dedupe={"enabled": False}))
        result = generate(cfg, show_progress=False)
    data = rows(cfg.run.store, result.run_id, tmp_path)
    assert len(data) == 12 and len({(r["question"], r["answer"]) for r in data}) == 12
    rejected = [e.payload for e in EventStore(cfg.run.store).iter_events(result.run_id, types=["sample_rejected"])]
    assert len(rejected) == 12 and {(r["stage"], r["kind"]) for r in rejected} == {("quality", "duplicate")}


def test_exported_rows_name_the_seeds_they_were_made_from(tmp_path):
    # A new question's seed_id is null: the examples it was written from were recorded but not exported,
    # so rows derived from a seed (one later found in an eval set, say) could not all be found.
    strategy = HALVES_AA_NQ
    with run_in_thread(ServerConfig()) as srv:
        cfg = config_from_dict(config(tmp_path, srv.url, strategy, {"queries": 20}))
        result = generate(cfg, show_progress=False)
    proposed = {e.payload["sample_id"]: e.payload
                for e in EventStore(cfg.run.store).iter_events(result.run_id, types=["sample_proposed"])}
    data = rows(cfg.run.store, result.run_id, tmp_path)
    assert {r["strategy"] for r in data} == {"answer_augmentation", "new_question"}
    for row in data:
        if row["strategy"] == "new_question":
            assert row["seed_id"] is None and len(row["source_seed_ids"]) == 3
            assert row["source_seed_ids"] == proposed[row["sample_id"]]["meta"]["examples"]
        else:
            assert row["source_seed_ids"] == [row["seed_id"]]
    chat = rows(cfg.run.store, result.run_id, tmp_path, "chat")
    assert [r["metadata"]["source_seed_ids"] for r in chat] == [r["source_seed_ids"] for r in data]


def test_export_formats_load_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    with run_in_thread(ServerConfig()) as srv:
        cfg = config_from_dict(config(tmp_path, srv.url, {"name": "answer_augmentation"}, {"queries": 12}))
        result = generate(cfg, show_progress=False)
    chat = rows(cfg.run.store, result.run_id, tmp_path, "chat")
    assert len(chat) == 12 and chat[0]["messages"][1]["role"] == "assistant"
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "export.chat"), split="train")
    assert len(ds) == 12
    out = tmp_path / "hf"
    subprocess.run(CLI + ["export", result.run_id, "--format", "hf", "--out", str(out), "--store", cfg.run.store],
                   check=True, capture_output=True)
    assert len(datasets.load_from_disk(str(out))) == 12


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _settled(store_url: str) -> int:
    import sqlite3

    path = store_url.split(":///", 1)[1]
    if not os.path.exists(path):
        return 0
    try:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT COUNT(*) FROM events WHERE type = 'query_settled'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["answer_augmentation", "question_rephrase", "new_question"])
def test_kill_9_mid_plan_then_resume_has_no_duplicates_or_gaps(tmp_path, strategy):
    budget = 90
    with run_in_thread(ServerConfig(latency_ms=30, jitter_ms=10)) as srv:
        raw = config(tmp_path, srv.url, {"name": strategy}, {"queries": budget})
        raw["limits"]["max_concurrency"] = 8
        cfg_path = tmp_path / "run.toml"
        cfg_path.write_text(_toml(raw))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(CLI + ["generate", "--config", str(cfg_path), "--no-progress"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for(lambda: _settled(raw["run"]["store"]) >= budget // 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out = subprocess.run(CLI + ["generate", "--config", str(cfg_path), "--resume", "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=120)
        answered = srv.stats()["answered"]
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1].split()[1]
    report = audit(raw["run"]["store"], run_id)
    assert answered <= budget and report["spent"]["queries"] == budget
    st = EventStore(raw["run"]["store"])
    done = [e.payload["item"] for e in st.iter_events(run_id, types=["item_done"])]
    assert len(done) == len(set(done)), "an item finished twice"
    data = rows(raw["run"]["store"], run_id, tmp_path)
    assert len({r["sample_id"] for r in data}) == len(data)
    settled = {e.payload["query_id"] for e in st.iter_events(run_id, types=["query_settled"])}
    # No gaps: every accepted row's queries settled, and every item of the plan prefix is done or open.
    assert all(set(r["query_ids"]) <= settled for r in data)


def _toml(d: dict, prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    out = "\n".join(lines) + "\n"
    for k, v in tables:
        name = f"{prefix}{k}"
        out += f"\n[{name}]\n" + _toml(v, name + ".")
    return out
