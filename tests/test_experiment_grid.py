"""A whole experiment grid against the test teacher server with the tiny student: 2 strategies x 3
budgets x 1 seed size (+ baselines), through the CLI; kill -9 mid-grid and rerun; the Ray executor.

Generation runs one item at a time (see testing/projects.write_experiment), so every larger cell
extends a smaller one's plan exactly and the grid pays precisely its largest budget per strategy.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from synthledger.testing.projects import write_experiment
from synthledger.testing.server import ServerConfig, run_in_thread

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "cli.py")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
BUDGETS = (4, 8, 16)
CELLS = 6  # grid cells; plus the untrained and the seeds-only baselines


def cli(*args: str, ok: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(CLI + list(args), capture_output=True, text=True, env=ENV, timeout=timeout)
    if ok:
        assert res.returncode == 0, f"{args}: {res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "llama"
    res = subprocess.run([sys.executable, "-m", "synthledger.testing.tiny_model", "--out", str(out)],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == str(out), res.stderr
    return out


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, tiny_student):
    folder = tmp_path_factory.mktemp("grid")
    store = f"sqlite:///{folder / 'store.db'}"
    with run_in_thread(ServerConfig()) as srv:
        grid = write_experiment(folder, srv.url, tiny_student, budgets=BUDGETS)
        res = cli("experiment", "run", str(grid), "--store", store, "--no-progress")
        answered = srv.stats()["answered"]
        result = json.loads(cli("experiment", "show", "grid", "--json", "--store", store).stdout)
        yield {"folder": folder, "store": store, "grid": grid, "stdout": res.stdout, "answered": answered,
               "result": result, "server": srv}


def test_table_and_json_shape(grid_run):
    result = grid_run["result"]
    assert result["experiment"]["name"] == "grid" and result["experiment"]["status"] == "completed"
    assert len(result["cells"]) == CELLS
    keys = {"strategy", "seed_size", "budget", "ratio", "replicate", "accuracy", "ci_low", "ci_high", "rows",
            "paid_queries", "reused_queries", "generate_run", "train_run", "eval_run"}
    for cell in result["cells"]:
        assert keys <= set(cell) and cell["status"] == "finished", cell
        assert cell["ratio"] == cell["budget"] / cell["seed_size"] and 0 <= cell["ci_low"] <= cell["ci_high"] <= 1
        assert cell["rows"] > cell["budget"] // 2  # its accepted samples plus the 4 seeds
        # The generated data's quality per cell, as `show` gives it for the cell's generate run.
        q = cell["quality"]
        assert q["answers"] > 0 and q["accepted"] + q["rejected"] >= q["answers"]
        assert q["accepted"] >= cell["rows"] - 4 and 0 <= q["truncation_rate"] <= 1 and q["duplicate_rate"] == 0
        assert q["with_reference"] == 0 or q["agreement"] == q["agreeing"] / q["with_reference"]
    for row in result["summary"]:
        q, members = row["quality"], [c for c in result["cells"] if (c["strategy"], c["budget"]) ==
                                      (row["strategy"], row["budget"])]
        assert q["answers"] == sum(c["quality"]["answers"] for c in members)
    kinds = sorted(b["kind"] for b in result["baselines"])
    assert kinds == ["seeds_only", "untrained"] and all(b["accuracy"] is not None for b in result["baselines"])
    (cross,) = result["crossovers"]
    assert {"seed_size", "ratio", "ci_low", "ci_high"} <= set(cross) and cross["seed_size"] == 4
    assert cross["ratio"] is None or BUDGETS[0] / 4 <= cross["ratio"] <= BUDGETS[-1] / 4
    assert set(result["paid"]) == {"queries", "input_tokens", "output_tokens", "usd"}
    out = grid_run["stdout"]
    assert "answer_augmentation" in out and "new_question" in out and "untrained student" in out
    assert "crossover at |S|=4" in out and out.strip().splitlines()[-1].endswith("completed")
    assert "agree" in out and "dup" in out


def test_reuse_pays_the_largest_budget_per_strategy_not_the_sum(grid_run):
    result = grid_run["result"]
    assert grid_run["answered"] == result["paid"]["queries"] == 2 * max(BUDGETS)  # not 2 * sum(BUDGETS)
    for strategy in ("answer_augmentation", "new_question"):
        cells = {c["budget"]: c for c in result["cells"] if c["strategy"] == strategy}
        assert sum(c["paid_queries"] for c in cells.values()) == max(BUDGETS)
        assert cells[8]["reused_queries"] == 4 and cells[16]["reused_queries"] == 8


def test_every_run_is_linked_and_passes_its_audit(grid_run):
    from synthledger.engine.ledger.audit import audit_run
    from synthledger.store.eventstore import EventStore

    store = EventStore(grid_run["store"])
    runs = {r.id: r for r in store.list_runs()}
    for cell in grid_run["result"]["cells"]:
        assert runs[cell["train_run"]].parent_id == cell["generate_run"]
        assert runs[cell["eval_run"]].parent_id == cell["train_run"]
    for info in runs.values():
        report = audit_run(store, info.id)
        assert report.ok, (info.name, report.violations[:3])
    assert sum(1 for r in runs.values() if r.kind == "experiment") == 1


def test_plot_is_a_valid_png(grid_run):
    out = grid_run["folder"] / "fig.png"
    cli("experiment", "plot", "grid", "--out", str(out), "--store", grid_run["store"])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 600 and height >= 300
    import matplotlib.image

    assert matplotlib.image.imread(str(out)).shape[:2] == (height, width)


def test_a_plot_that_cannot_be_written_is_one_line_naming_the_path(grid_run):
    """--out under a file was a FileExistsError traceback from the folder's mkdir."""
    blocker = grid_run["folder"] / "not-a-folder"
    blocker.write_text("")
    res = cli("experiment", "plot", "grid", "--out", str(blocker / "fig.png"), "--store", grid_run["store"], ok=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert " ".join(res.stderr.split()) == f"error: cannot write {blocker}/fig.png: {blocker} is a file, not a folder"


def test_recommend_from_names_the_experiment(grid_run):
    exp = grid_run["result"]["experiment"]
    res = cli("recommend", "--seeds", "4", "--budget", "16", "--from", "grid", "--store", grid_run["store"])
    assert f"{exp['name']} ({exp['id']})" in res.stdout
    outside = cli("recommend", "--seeds", "100", "--budget", "2000", "--from", "grid", "--store", grid_run["store"])
    assert "outside the range" in outside.stdout and "literature" in outside.stdout


def test_rerunning_a_finished_experiment_does_nothing(grid_run):
    before = grid_run["server"].stats()["answered"]
    res = cli("experiment", "run", str(grid_run["grid"]), "--store", grid_run["store"], "--no-progress")
    assert "every cell had finished already" in res.stderr
    assert grid_run["server"].stats()["answered"] == before


@pytest.mark.parametrize("edit", ["heldout.jsonl", "seeds.jsonl"])
def test_a_rerun_after_its_seeds_or_held_out_file_changed_is_refused(grid_run, edit):
    # QA: the grid hash names the files, not what is in them. A held-out file cut to 20 rows between
    # two sessions scored 3 cells on the old 30 examples and 3 on the new 20, in one table; changed
    # seed answers trained one cell on the new ones.
    path = grid_run["folder"] / edit
    kept = path.read_text()
    try:
        lines = kept.splitlines(keepends=True)
        path.write_text("".join(lines[:-1]) if edit == "heldout.jsonl" else kept.replace("####", "#### 99"))
        res = cli("experiment", "run", str(grid_run["grid"]), "--store", grid_run["store"], "--no-progress", ok=False)
    finally:
        path.write_text(kept)
    what = "held-out examples" if edit == "heldout.jsonl" else "seed examples"
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"the {what} of experiment 'grid' changed since it started" in " ".join(res.stderr.split())


def test_another_experiment_in_its_workdir_is_refused_before_it_pays(grid_run):
    # `--set experiment.name=grid2` (or the same grid against another store) ran in the same `work/`:
    # it retrained the students and replaced the predictions the first store's runs point at.
    work = grid_run["folder"] / "work"
    files = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    answered = grid_run["server"].stats()["answered"]
    other = f"sqlite:///{grid_run['folder'] / 'other.db'}"
    for args in (["--store", grid_run["store"], "--set", "experiment.name=grid2"], ["--store", other]):
        res = cli("experiment", "run", str(grid_run["grid"]), "--no-progress", *args, ok=False)
        (said,) = [line for line in res.stderr.splitlines() if line.startswith("error:")]  # (after the store line)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert f"experiment.workdir {work} belongs to experiment 'grid'" in said and "use {name} in it" in said, said
    assert grid_run["server"].stats()["answered"] == answered and not (grid_run["folder"] / "other.db").exists()
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == files


# `experiment show` and `recommend --from` are folds over events: they run where torch cannot load.
NO_TORCH = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "peft", "accelerate", "ray"}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_show_and_recommend_need_no_torch(grid_run):
    for args in (["experiment", "show", "grid", "--json"], ["recommend", "--seeds", "4", "--budget", "8", "--from", "grid"]):
        res = subprocess.run([sys.executable, "-c", NO_TORCH, str(ROOT / "cli.py"), *args, "--store", grid_run["store"]],
                             capture_output=True, text=True, env=ENV, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]


def _count(db: Path, type_: str) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM events WHERE type = ?", (type_,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_kill_9_mid_grid_then_rerun_finishes_with_the_same_totals(grid_run, tmp_path, tiny_student):
    db = tmp_path / "store.db"
    store = f"sqlite:///{db}"
    with run_in_thread(ServerConfig()) as srv:
        grid = write_experiment(tmp_path, srv.url, tiny_student, budgets=BUDGETS)
        args = ["experiment", "run", str(grid), "--store", store, "--no-progress", "--set", "experiment.baselines=false"]
        proc = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not (_count(db, "cell_finished") >= 1 and _count(db, "cell_generated") == CELLS):
            assert proc.poll() is None and time.monotonic() < deadline, "the grid ended before it could be killed"
            time.sleep(0.2)
        finished_at_kill = _count(db, "cell_finished")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert finished_at_kill < CELLS
        paid_before = srv.stats()["answered"]
        rerun = cli(*args)
        assert srv.stats()["answered"] == paid_before  # nothing bought twice
    result = json.loads(cli("experiment", "show", "grid", "--json", "--store", store).stdout)
    assert result["experiment"]["status"] == "completed" and "completed" in rerun.stdout
    ref = {c["id"]: c for c in grid_run["result"]["cells"]}
    for cell in result["cells"]:  # each cell once, with the uninterrupted run's totals
        assert cell["status"] == "finished"
        assert (cell["rows"], cell["paid_queries"], cell["reused_queries"]) == (
            ref[cell["id"]]["rows"], ref[cell["id"]]["paid_queries"], ref[cell["id"]]["reused_queries"])
    assert result["paid"]["queries"] == grid_run["result"]["paid"]["queries"] == paid_before
    assert _count(db, "cell_finished") >= CELLS


def test_ray_executor_gives_the_local_table(grid_run):
    ray = pytest.importorskip("ray")
    from synthledger.engine.experiment.config import load_experiment
    from synthledger.engine.experiment.driver import run_experiment

    exp = load_experiment(grid_run["grid"], ['experiment.name="on-ray"', 'experiment.strategies=["answer_augmentation"]',
                                             "experiment.baselines=false", "experiment.workdir=\"work-ray\""])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        before = grid_run["server"].stats()["answered"]
        outcome = run_experiment(exp, grid_run["store"], executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert outcome.ok, outcome.message
    assert grid_run["server"].stats()["answered"] == before  # every answer came from the local run's cells
    local = {c["id"]: c for c in grid_run["result"]["cells"]}
    for cell in outcome.result["cells"]:
        ref = local[cell["id"]]
        assert cell["paid_queries"] == 0 and cell["reused_queries"] == cell["budget"]
        assert (cell["accuracy"], cell["rows"], cell["n"]) == (ref["accuracy"], ref["rows"], ref["n"])
    from synthledger.engine.experiment.results import load_state
    from synthledger.store.eventstore import EventStore

    st = EventStore(grid_run["store"])
    mine = {k: r.finished["outcomes"] for k, r in load_state(st, "on-ray").cells.items()}
    theirs = {k: r.finished["outcomes"] for k, r in load_state(st, "grid").cells.items() if k in mine}
    assert mine == theirs


def _student_runs(db: Path) -> dict[str, str]:
    """The training and evaluation runs in the store, by id, with their status."""
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return dict(con.execute("SELECT id, status FROM runs WHERE kind IN ('train', 'eval')").fetchall())
    except sqlite3.OperationalError:  # the store is not made yet
        return {}
    finally:
        con.close()


def _running_student_runs(db: Path) -> int:
    return sum(status == "running" for status in _student_runs(db).values())


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_to_the_driver_closes_its_workers_runs_as_interrupted(tmp_path, tiny_student, stop):
    # Its workers were killed, but their train/eval runs read `running` until some later `train` or
    # `eval` swept them. SIGTERM once training runs comes after a generation cell, whose event loop
    # left SIGTERM at the default: the driver died at once, its run and its workers' left `running`.
    db = tmp_path / "store.db"
    with run_in_thread(ServerConfig()) as srv:
        grid = write_experiment(tmp_path, srv.url, tiny_student, budgets=BUDGETS)
        proc = subprocess.Popen(CLI + ["experiment", "run", str(grid), "--store", f"sqlite:///{db}", "--no-progress"],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while not _running_student_runs(db):
            assert proc.poll() is None and time.monotonic() < deadline, "no train/eval run was ever seen running"
            time.sleep(0.05)
        proc.send_signal(stop)  # the driver alone, as `kill -INT PID` does
        out, err = proc.communicate(timeout=120)
    assert "interrupted" in out, (proc.returncode, out, err)
    assert _running_student_runs(db) == 0


def _count_where(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # the store is not made yet
        return 0
    finally:
        con.close()


def test_ctrl_c_during_a_generation_is_an_interruption_not_a_failed_cell(tmp_path, tiny_student):
    # The cell was recorded as failed, and the message pointed at `generate --resume`, which is not
    # how an experiment continues.
    db = tmp_path / "store.db"
    # The first cell's 4 queries go out at once and take 3 s: the stop comes while they are in flight.
    with run_in_thread(ServerConfig(latency_ms=3000)) as srv:
        grid = write_experiment(tmp_path, srv.url, tiny_student, budgets=BUDGETS)
        proc = subprocess.Popen(CLI + ["experiment", "run", str(grid), "--store", f"sqlite:///{db}", "--no-progress"],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not _count_where(db, "SELECT count(*) FROM events WHERE type = 'query_dispatched'"):
            assert proc.poll() is None and time.monotonic() < deadline, "no generation was ever seen running"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    said = " ".join((out + err).split())
    assert "interrupted" in said and "was interrupted; run the same command again to continue" in said, said
    assert "generate --resume" not in said and "failed" not in said, said
    assert _count_where(db, "SELECT count(*) FROM events WHERE type = 'cell_failed'") == 0


def test_a_cell_stopped_in_its_evaluation_is_not_trained_again(tmp_path, tiny_student):
    # Its training had completed (a run, a student with its provenance); the rerun trained it anew.
    db = tmp_path / "store.db"
    evaluating_a_trained_student = ("SELECT count(*) FROM runs e JOIN runs t ON e.parent_id = t.id "
                                    "WHERE e.kind = 'eval' AND e.status = 'running' AND t.kind = 'train'")
    with run_in_thread(ServerConfig()) as srv:
        # One cell (no baselines): its training, then its evaluation, which the stop lands in.
        grid = write_experiment(tmp_path, srv.url, tiny_student, budgets=(4,), strategies=("answer_augmentation",))
        args = ["experiment", "run", str(grid), "--store", f"sqlite:///{db}", "--no-progress",
                "--set", "experiment.baselines=false"]
        proc = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while not _count_where(db, evaluating_a_trained_student):
            assert proc.poll() is None and time.monotonic() < deadline, "no trained student was ever seen in evaluation"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        stopped_in_eval = _count_where(db, "SELECT count(*) FROM runs e JOIN runs t ON e.parent_id = t.id "
                                           "WHERE e.kind = 'eval' AND e.status = 'interrupted' AND t.kind = 'train'")
        assert stopped_in_eval >= 1
        cli(*args)
    trained_twice = _count_where(db, "SELECT count(*) FROM (SELECT parent_id FROM runs WHERE kind = 'train' "
                                     "AND status = 'completed' GROUP BY parent_id HAVING count(*) > 1)")
    assert trained_twice == 0
    assert _count(db, "cell_finished") == 1


@pytest.fixture
def ray_instance():
    """A local Ray instance the driver joins (as it joins a cluster: `address`, or Ray already up)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _ctrl_c_once_training(tmp_path: Path, tiny_student: Path, db: Path) -> Any:
    """Run a grid on the joined Ray instance; Ctrl-C it once a train/eval run is running; the outcome."""
    from synthledger.engine.experiment.config import load_experiment
    from synthledger.engine.experiment.driver import run_experiment

    main, done = threading.get_ident(), threading.Event()

    def ctrl_c() -> None:  # (a job seen running takes seconds more: the grid is not over)
        while not _running_student_runs(db):
            if done.wait(0.05):
                return
        signal.pthread_kill(main, signal.SIGINT)

    with run_in_thread(ServerConfig()) as srv:
        grid = write_experiment(tmp_path, srv.url, tiny_student, budgets=BUDGETS)
        exp = load_experiment(grid, [f'experiment.workdir="{tmp_path / "work"}"'])
        threading.Thread(target=ctrl_c, daemon=True).start()
        try:
            outcome = run_experiment(exp, f"sqlite:///{db}", executor="ray", progress=False)
        finally:
            done.set()
    return outcome


def test_a_stopped_experiment_on_a_ray_cluster_it_joined_cancels_its_tasks(tmp_path, tiny_student, ray_instance):
    """On a cluster the driver joined (here one this test started), its train/eval tasks trained on
    after Ctrl-C had stopped the experiment, to the end: a job running when the driver returned
    finished its run as `completed` seconds later. And a job cancelled while its run was being
    opened left that run `running` (under load, in CI): Ray keeps the worker process, so no sweep
    closed it."""
    db = tmp_path / "store.db"
    outcome = _ctrl_c_once_training(tmp_path, tiny_student, db)
    assert outcome.status == "interrupted", outcome.message
    assert _running_student_runs(db) == 0  # each cancelled job closed its own run
    unfinished = {rid for rid, status in _student_runs(db).items() if status != "completed"}
    time.sleep(15)  # a job left going finishes its tiny training and evaluation in this time (no teacher needed)
    later = _student_runs(db)
    assert not [rid for rid in unfinished if later.get(rid) == "completed"], "a job trained on after the stop"


def test_a_ray_task_killed_at_a_stop_has_its_run_closed_before_the_driver_returns(tmp_path, tiny_student,
                                                                                  ray_instance, monkeypatch):
    # A task that ignores its cancel is killed after CANCEL_WAIT_S (0 here: every task is killed). Its
    # run can only be closed by the driver's sweep, which closes runs whose process is gone, and a
    # killed Ray worker outlives its task's end by a moment: the sweep must wait for it.
    from synthledger.engine.experiment import executor_ray

    monkeypatch.setattr(executor_ray, "CANCEL_WAIT_S", 0.0)
    db = tmp_path / "store.db"
    outcome = _ctrl_c_once_training(tmp_path, tiny_student, db)
    assert outcome.status == "interrupted", outcome.message
    assert _running_student_runs(db) == 0
    assert "interrupted" in _student_runs(db).values()
