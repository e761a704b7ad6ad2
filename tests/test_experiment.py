"""Experiments without a model: answer reuse across runs, grid-file errors, seed subsets, statistics."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthledger.engine.ledger.audit import audit_run
from synthledger.engine.errors import ConfigError
from synthledger.engine.run.config import load_config
from synthledger.engine.experiment.config import load_experiment
from synthledger.engine.experiment.prepare import prepare
from synthledger.engine.experiment.seeds import subsets
from synthledger.engine.experiment.stats import Scored, bootstrap, crossover, interval, mean_over
from synthledger.engine.run.launch import generate
from synthledger.engine.api import Seed
from synthledger.engine.strategy import PluginOptions
from synthledger.store.eventstore import EventStore
from synthledger.testing.projects import write_experiment, write_project
from synthledger.testing.server import ServerConfig, run_in_thread

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


# ---- answers are reused, not re-bought ---------------------------------------------------------
def test_a_second_run_of_the_same_config_pays_only_what_is_new(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread(ServerConfig()) as srv:
        cfg = write_project(tmp_path, srv.url, queries=6)
        first = generate(load_config(cfg), store, show_progress=False)
        assert srv.stats()["answered"] == 6
        again = generate(load_config(cfg, ["budget.queries=10", "run.name=again"]), store, show_progress=False)
        assert srv.stats()["answered"] == 10  # 6 reused, 4 bought
        replicate = generate(load_config(cfg, ["run.replicate=1", "run.name=replicate"]), store, show_progress=False)
        assert srv.stats()["answered"] == 16  # another replicate is another sample: paid again
    report = audit_run(store, again.run_id)
    assert report.ok, report.violations
    assert report.spent["queries"] == 10 and report.reused["queries"] == 6 and report.paid["queries"] == 4
    assert report.counts["reused"] == 6 and report.counts["settled"] == 4
    assert audit_run(store, replicate.run_id).reused["queries"] == 0
    assert again.snapshot["reused"]["queries"] == 6 and first.snapshot["reused"]["queries"] == 0
    # Same rows from the reused answers as from the paid ones.
    texts = lambda rid: {e.payload["query_id"]: e.payload["text"] for e in store.iter_events(rid)  # noqa: E731
                         if e.type in ("query_settled", "query_reused")}
    a, b = texts(first.run_id), texts(again.run_id)
    assert all(b[q] == t for q, t in a.items())


def test_audit_checks_every_reuse_against_its_source(tmp_path):
    db = tmp_path / "s.db"
    store = EventStore(f"sqlite:///{db}")
    with run_in_thread(ServerConfig()) as srv:
        cfg = write_project(tmp_path, srv.url, queries=3)
        first = generate(load_config(cfg), store, show_progress=False)
        second = generate(load_config(cfg, ["run.name=second"]), store, show_progress=False)
    assert audit_run(store, second.run_id).ok
    con = sqlite3.connect(db)
    seq, payload = con.execute("SELECT seq, payload FROM events WHERE run_id = ? AND type = 'query_settled' "
                               "ORDER BY seq LIMIT 1", (first.run_id,)).fetchone()
    changed = json.loads(payload)
    changed["text"] = "something else"
    con.execute("UPDATE events SET payload = ? WHERE run_id = ? AND seq = ?",
                (json.dumps(changed, sort_keys=True, separators=(",", ":")), first.run_id, seq))
    con.commit()
    report = audit_run(store, second.run_id)
    assert not report.ok
    assert any("different answer text" in v.message for v in report.violations)


def test_answers_are_reused_only_from_the_endpoint_that_gave_them(tmp_path):
    # One model name at two servers is two teachers: a run moved to the second got the first's answers.
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread(ServerConfig()) as first_server, run_in_thread(ServerConfig()) as other_server:
        cfg = write_project(tmp_path, first_server.url, queries=4)
        generate(load_config(cfg), store, show_progress=False)
        moved = generate(load_config(cfg, [f'teacher.base_url="{other_server.url}/v1/"', "run.name=moved"]), store,
                         show_progress=False)
        assert other_server.stats()["answered"] == 4
        back = generate(load_config(cfg, ["run.name=back"]), store, show_progress=False)
        assert first_server.stats()["answered"] == 4  # the same endpoint again: reused, not paid
    assert moved.snapshot["reused"]["queries"] == 0 and back.snapshot["reused"]["queries"] == 4
    assert audit_run(store, back.run_id).ok


def test_reuse_can_be_turned_off(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread(ServerConfig()) as srv:
        cfg = write_project(tmp_path, srv.url, queries=4)
        generate(load_config(cfg), store, show_progress=False)
        generate(load_config(cfg, ["run.reuse=false", "run.name=fresh"]), store, show_progress=False)
        assert srv.stats()["answered"] == 8


# ---- the grid file: one-line errors before anything runs ---------------------------------------
@pytest.fixture
def grid(tmp_path) -> Path:
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "config.json").write_text("{}")
    return write_experiment(tmp_path, "http://127.0.0.1:9", tmp_path / "student")


@pytest.mark.parametrize("overrides, message", [
    (["experiment.colour=1"], "experiment.colour: unknown key"),
    (["experiment.strategies=[]"], "experiment.strategies is empty"),
    (["experiment.budgets=[]"], "experiment.budgets is empty"),
    (["experiment.ratios=[2.0]"], "set exactly one of experiment.budgets"),
    (["experiment.budgets=[1, 8]"], "below new_question's minimum of 2 counted queries per sample"),
    (["experiment.eval.heldout=\"seeds.jsonl\""], "also appear in the training seeds"),
    (["experiment.strategies=[\"answer_augmentation\", \"no_such_strategy\"]"],
     "experiment.strategies: no strategy named 'no_such_strategy'"),
    (["experiment.seed_sizes=[64]"], "the largest seed set (64) needs more seeds"),
    (["experiment.eval.colour=1"], "experiment.eval.colour: unknown key"),
    (["experiment.budgts=[8]"], "experiment.budgts: unknown key (did you mean `budgets`?)"),
    (["experiment.eval.heldot=\"x.jsonl\""], "experiment.eval.heldot: unknown key (did you mean `heldout`?)"),
    (["experiment.strategy_options.new_questions.check_well_posed=false"],
     "experiment.strategy_options.new_questions: no strategy of that name"),
    (["experiment.eval.heldout=\"nofile.jsonl\""], "experiment.eval.heldout: held-out file"),
])
def test_grid_errors_are_one_line_before_anything_runs(grid, overrides, message):
    with pytest.raises(ConfigError) as err:
        prepare(load_experiment(grid, overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


class LostPlan:
    """A third-party strategy whose plan raises."""

    name, roles = "lost_plan", ("teacher",)
    Options = PluginOptions

    def __init__(self, options, seeds, task, seed):
        self.seeds = seeds

    def plan(self):
        raise RuntimeError("the plan lost its place")
        yield

    def item_cost(self, item):
        return {"teacher": 1}


def test_a_strategy_that_fails_while_the_grid_is_checked_is_one_line_naming_it(grid):
    import types

    from synthledger.engine import host
    from synthledger.engine.hookspecs import hookimpl

    module = types.ModuleType("lost_plan_plugin")  # registered with the host as an entry point's module is
    module.register_strategies = hookimpl(lambda register: register("lost_plan", LostPlan))
    host.get_host().add(module, "lost_plan_plugin", "lost-plan", "1.0")
    try:
        with pytest.raises(ConfigError) as err:
            prepare(load_experiment(grid, ['experiment.strategies=["lost_plan"]']))
    finally:
        host.reset_host()
    assert "strategy 'lost_plan' (plugin lost_plan_plugin from lost-plan 1.0) plan() raised RuntimeError" in str(err.value)
    assert "test_experiment.py:" in str(err.value) and "\n" not in str(err.value)


def test_the_command_prints_one_line_and_writes_nothing(grid, tmp_path):
    store = tmp_path / "store.db"
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "experiment", "run", str(grid), "--store",
                          f"sqlite:///{store}", "--set", "experiment.budgets=[1, 2]"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "minimum" in res.stderr and "Traceback" not in res.stderr
    assert not store.exists() and not (tmp_path / "work").exists()


def test_a_resume_where_no_store_is_makes_none(grid, tmp_path):
    # --resume of a mistyped store made an empty one, then said there was no experiment to resume.
    store = tmp_path / "typo.db"
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "experiment", "run", str(grid), "--resume",
                          "--store", f"sqlite:///{store}"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2 and f"store {store} does not exist" in res.stderr, res.stderr
    assert res.stderr.count("error:") == 1 and "Traceback" not in res.stderr and not store.exists()


def test_a_generation_killed_with_queries_out_says_how_many_it_lost(tmp_path):
    # kill -9 with requests out: they count as spent (their outcome is unknown), are never answered,
    # and the cell trains on fewer answers than Q; the grid's table said nothing of it.
    from synthledger.engine.experiment.report import lost_lines
    from synthledger.engine.experiment.stages import generation_outcome

    url = f"sqlite:///{tmp_path / 's.db'}"
    with run_in_thread(ServerConfig(latency_ms=4000)) as srv:
        write_project(tmp_path, srv.url, name="cell", seeds=4, queries=4)
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "generate", "-c", "run.toml", "--no-progress",
                                 "--store", url], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        db = tmp_path / "s.db"
        deadline = time.monotonic() + 60
        while srv.stats()["received"] < 4:
            assert proc.poll() is None and time.monotonic() < deadline, "the run never had its queries out"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        assert db.exists()
        resumed = subprocess.run([sys.executable, str(ROOT / "cli.py"), "generate", "-c", "run.toml", "--resume",
                                  "--no-progress", "--store", url], cwd=tmp_path, env=ENV, capture_output=True,
                                 text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
    store = EventStore(url)
    gen = generation_outcome(store, store.resolve("cell").id)
    store.close()
    assert gen.lost == 4 and gen.paid["queries"] == 4 and gen.rows == 0
    cell = {"id": "answer_augmentation/s4/q4/r0", "budget": 4, "lost_queries": gen.lost}
    assert lost_lines([cell]) == ["answer_augmentation/s4/q4/r0: 4 queries were out when a process was killed; "
                                  "paid, never answered, so it trained on fewer answers than Q = 4"]


# ---- nested seed subsets -----------------------------------------------------------------------
def test_seed_subsets_are_nested_within_a_replicate_and_differ_between_replicates():
    pool = [Seed(id=str(i), question=f"q{i}") for i in range(40)]
    subs = subsets(pool, [4, 8, 16], replicates=3, seed=7)
    for r in range(3):
        small, mid, big = (set(s.id for s in subs[(r, n)]) for n in (4, 8, 16))
        assert small < mid < big and len(big) == 16
    assert {s.id for s in subs[(0, 16)]} != {s.id for s in subs[(1, 16)]}
    assert subs == subsets(pool, [4, 8, 16], replicates=3, seed=7)  # reproducible


# ---- statistics --------------------------------------------------------------------------------
def test_crossover_is_interpolated_on_log_br():
    value, note = crossover([2.0, 8.0, 32.0], [-0.2, -0.1, 0.1])
    assert value == pytest.approx(16.0) and note == ""  # half way between 8 and 32 in log space
    assert crossover([2.0, 8.0], [0.1, 0.2])[0] is None  # ahead already at the lowest ratio
    assert "ahead (or tied)" in crossover([2.0, 8.0], [-0.1, 0.0])[1]
    assert "the same" in crossover([2.0, 8.0], [0.0, 0.0])[1]
    assert crossover([2.0, 8.0, 32.0], [0.0, 0.2, 0.3])[0] == pytest.approx(2.0)


def test_paired_bootstrap_interval_holds_the_estimate_and_skips_unscored_examples():
    a = Scored.parse("1100110011" * 3)
    b = Scored.parse("11-1111111" * 3)
    assert b.accuracy() == 1.0 and len(b.scored) == 27
    reps = {0: {"a": a, "b": b}, 1: {"a": Scored.parse("1" * 30), "b": b}}
    assert mean_over(reps, "a") == pytest.approx((0.6 + 1.0) / 2)
    worlds = bootstrap(reps, 30, 300, seed=1)
    low, high = interval([w["a"] for w in worlds])
    assert low <= mean_over(reps, "a") <= high and low < high
    assert all(w["b"] == 1.0 for w in worlds)
    assert bootstrap(reps, 30, 50, seed=1) == bootstrap(reps, 30, 50, seed=1)
