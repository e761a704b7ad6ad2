"""Training and evaluation runs never overwrite one another's files: two students trained from the
same generation run each keep their adapter, their evaluation (named after student, held-out set
and run id) and its predictions. A short training run logs its loss at every step. One whose process
died is closed as interrupted by the next."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthledger.cli import app
from synthledger.engine.ledger.audit import audit_run
from synthledger.engine.student.runs import open_log
from synthledger.engine.run.config import load_config
from synthledger.engine.run.launch import generate
from synthledger.store.eventstore import EventStore
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread
from synthledger.testing.tiny_model import build_tiny_llama


@pytest.fixture(scope="module")
def two_students(tmp_path_factory):
    """A generation run `src`, then `train src` twice (each evaluating its student right after)."""
    tmp = tmp_path_factory.mktemp("students")
    tiny = build_tiny_llama(tmp / "tiny")
    url = f"sqlite:///{tmp / 's.db'}"
    with run_in_thread() as srv:
        config = write_project(tmp / "project", srv.url, name="src", seeds=4, queries=8)
        assert generate(load_config(config), url, show_progress=False).ok
    (tmp / "held.jsonl").write_text("".join(json.dumps({"question": f"What is {i} plus 7?", "answer": str(i + 7)})
                                            + "\n" for i in range(3)))
    (tmp / "train.toml").write_text(f"""[trainer]
student = "{tiny}"
max_steps = 3
batch_size = 2

[eval]
heldout = "held.jsonl"
limit = 2
batch_size = 2
max_new_tokens = 4
""")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)
    mp.setenv("HF_HUB_OFFLINE", "1")
    outputs = []
    try:
        for lr in ("1e-4", "2e-4"):
            r = CliRunner().invoke(app, ["train", "src", "-c", "train.toml", "--store", url, "--no-progress",
                                         "--set", f"trainer.learning_rate={lr}"])
            assert r.exit_code == 0, r.output
            outputs.append(r.output)
    finally:
        mp.undo()
    return tmp, url, outputs


def test_each_evaluation_has_its_own_name_and_predictions_that_survive(two_students):
    tmp, url, outputs = two_students
    store = EventStore(url)
    evals = [r for r in store.list_runs(kind="eval")]
    trains = [r for r in store.list_runs(kind="train")]
    assert len(evals) == 2 and len(trains) == 2
    students = {Path(re.search(r"adapter in (\S+)", out).group(1).rstrip(";")).name for out in outputs}
    # eval-<student>-<held-out set>-<run id>
    assert {r.name for r in evals} == {f"eval-{student}-held-{run.id}" for student, run in
                                       zip(sorted(students), sorted(evals, key=lambda r: r.created))}
    for run in evals:
        assert store.resolve(run.name).id == run.id  # `show NAME` names one run
    predictions = [tmp / ".synthledger" / "evals" / run.id / "predictions.jsonl" for run in evals]
    for path in predictions:  # both survive, each with its own student's predictions
        assert len(path.read_text().splitlines()) == 2
    finished = {r.id: next(store.iter_events(r.id, types=["eval_finished"])).payload for r in evals}
    assert sorted(p["predictions_path"] for p in finished.values()) == sorted(str(p) for p in predictions)
    assert len({p["model"] for p in finished.values()}) == 2  # two students, two adapters


def test_two_trainings_of_one_run_keep_both_students(two_students):
    tmp, url, outputs = two_students
    dirs = [Path(re.search(r"adapter in (\S+)", out).group(1).rstrip(";")) for out in outputs]
    assert dirs[0] != dirs[1] and all(d.is_absolute() for d in dirs)
    runs = [json.loads((d / "provenance.json").read_text())["train_run_id"] for d in dirs]
    # The first takes the configured folder; the second finds it taken and appends its own run id.
    assert [d.name for d in dirs] == ["src", f"src-{runs[1]}"] and runs[0] != runs[1]
    for d in dirs:
        assert (d / "adapter" / "adapter_config.json").is_file()


def test_a_short_training_run_logs_the_loss_at_every_step(two_students):
    tmp, url, outputs = two_students
    store = EventStore(url)
    for run in store.list_runs(kind="train"):
        steps = [e.payload["step"] for e in store.iter_events(run.id, types=["training_progress"])]
        assert steps == [1, 2, 3]
        curve_path = next(store.iter_events(run.id, types=["training_finished"])).payload["artifacts"]["loss_curve"]
        assert [p["step"] for p in json.loads(Path(curve_path).read_text())] == [1, 2, 3]


def _dead_run(url: str, kind: str, name: str) -> str:
    """A training or evaluation run whose process died mid-way, as a kill leaves it: `running`, its
    lease held by a process that is gone."""
    code = ("import os, sys\nfrom synthledger.store.eventstore import EventStore\n"
            "from synthledger.engine.student.runs import open_log\n"
            f"log = open_log(EventStore({url!r}), {name!r}, {kind!r}, {{'source': 'src'}})\n"
            "print(log.run_id, flush=True)\nos._exit(9)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 9, out.stderr
    return out.stdout.strip()


def test_runs_whose_process_died_are_closed_as_interrupted_by_the_next_one(tmp_path, monkeypatch):
    """They are never resumed: before, one killed with its experiment read `running` forever."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    dead = [_dead_run(url, "train", "train-src"), _dead_run(url, "eval", "eval-src-held")]
    store = EventStore(url)
    alive = open_log(store, "train-other", "train", {"source": "other"})  # this process: still working
    assert {store.get_run(r).status for r in dead} == {"running"}
    (tmp_path / "held.jsonl").write_text(json.dumps({"question": "What is 1 plus 7?", "answer": "8"}) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(app, ["eval", str(build_tiny_llama(tmp_path / "tiny")), "--on", "held.jsonl",
                                 "--store", url, "--no-progress", "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    assert "Loading weights" not in r.output and "it/s" not in r.output  # --no-progress: no library's bars either
    for run_id in dead:
        assert store.get_run(run_id).status == "interrupted"
        last = list(store.iter_events(run_id))[-1]
        assert last.type == "run_finished" and last.payload["status"] == "interrupted"
        assert audit_run(store, run_id).ok
    assert store.get_run(alive.run_id).status == "running"
