"""An experiment grid end to end on this machine: what reuse saves, and where the time goes.

A real grid (SmolLM2-135M student, reasoning-gym seeds, 2-3 strategies x 3 budgets, baselines)
runs through `cli.py experiment run` against the project's test teacher server (it knows the
seeds' answers, so answer augmentation gets correct worked answers) or, with `--teacher local`,
the local SmolLM2 teacher. Figures, all measured in this run:

(a) paid teacher queries / the naive sum over cells (every cell buying its own Q teacher answers).
    Perfect reuse pays the largest budget per (strategy, |S|, replicate): its ratio, max Q / sum Q,
    is printed as the floor; the target is the floor + 5 points. (The issue's "1/number-of-budgets
    + 5%" is that floor only when the budgets are equal: with distinct budgets the largest one
    alone is more than 1/n of the sum.) Also every role: paid / what the cells used.
(b) wall time per cell by stage (generate, train, eval), and the whole grid's wall time;
(c) the measured table (accuracy with 95% CIs, baselines, crossover), as `experiment show --json`.

    python benchmarks/experiment.py              # ~30 min on 2 CPU cores
    python benchmarks/experiment.py --quick      # a reduced grid: a few minutes
    python benchmarks/experiment.py --gpu        # on a GPU: bf16, a larger held-out set
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "experiment.json"
MARGIN = 0.05

PRESETS: dict[str, dict[str, Any]] = {
    "full": {"strategies": ["answer_augmentation", "question_rephrase", "new_question"], "seed_size": 16,
             "budgets": [16, 32, 64], "epochs": 3, "limit": 50, "max_new_tokens": 80, "batch": 25},
    "quick": {"strategies": ["answer_augmentation", "new_question"], "seed_size": 8, "budgets": [8, 16, 32],
              "epochs": 2, "limit": 20, "max_new_tokens": 80, "batch": 20},
    "gpu": {"strategies": ["answer_augmentation", "question_rephrase", "new_question"], "seed_size": 32,
            "budgets": [32, 128, 512], "epochs": 3, "limit": 300, "max_new_tokens": 96, "batch": 100},
}


def write_grid(folder: Path, teacher: str, url: str | None, dataset: str, preset: dict[str, Any],
               executor: dict[str, Any]) -> Path:
    teacher_section = (f'provider = "openai-compatible"\nbase_url = "{url}/v1"\nmodel = "test-teacher"\n'
                       if teacher == "server" else
                       'provider = "local"\nmodel = "smollm2"\ntimeout_s = 900\nbatch_size = 16\n')
    (folder / "run.toml").write_text(f"""[run]
name = "bench-base"

[seeds]
source = "reasoning-gym"
dataset = "{dataset}"
seed = 3

[teacher]
{teacher_section}max_tokens = 96
temperature = 0.7

[budget]
counted_roles = ["teacher"]
""")
    (folder / "train.toml").write_text(f"""[trainer]
name = "lora_sft"
student = "smollm2"
epochs = {preset['epochs']}
learning_rate = 2e-4
batch_size = 8
max_length = 256
seed = 0
lora_r = 16
lora_alpha = 32
bf16 = "auto"

[data]
include_seeds = true
""")
    grid = folder / "grid.toml"
    grid.write_text(f"""[experiment]
name = "bench"
base = "run.toml"
train = "train.toml"
strategies = {json.dumps(preset['strategies'])}
seed_sizes = [{preset['seed_size']}]
budgets = {json.dumps(preset['budgets'])}
replicates = 1
workdir = "work"

[experiment.strategy_options.new_question]
check_well_posed = false

[experiment.eval]
heldout = "reasoning-gym:{dataset}:1234"
limit = {preset['limit']}
max_new_tokens = {preset['max_new_tokens']}
batch_size = {preset['batch']}

[experiment.executor]
parallel = {executor['parallel']}
num_cpus = {executor['num_cpus']}
num_gpus = {executor['num_gpus']}
""")
    return grid


def seed_answers(dataset: str, size: int) -> dict[str, str]:
    """The seed pool's answers, so the test server answers seed questions correctly."""
    import reasoning_gym

    return {str(e["question"]).strip(): str(e["answer"]) for e in reasoning_gym.create_dataset(dataset, size=size, seed=3)}


def run_grid(grid: Path, store: str, executor: str) -> tuple[dict[str, Any], float]:
    cmd = [sys.executable, str(ROOT / "cli.py"), "experiment", "run", str(grid), "--store", store, "--no-progress",
           "--executor", executor]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"experiment run failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    shown = subprocess.run([sys.executable, str(ROOT / "cli.py"), "experiment", "show", "bench", "--json",
                            "--store", store], capture_output=True, text=True, check=True)
    return json.loads(shown.stdout), wall


def paid_teacher_queries(db: Path) -> int:
    """Teacher answers actually bought, from the store's `queries` view (reused answers are not
    queries of their run: they were never sent)."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM queries q JOIN runs r ON r.id = q.run_id "
                           "WHERE r.kind = 'generate' AND q.role = 'teacher' AND q.status = 'settled'").fetchone()[0]
    finally:
        con.close()


def figures(result: dict[str, Any], paid_teacher: int, answered: int | None, wall: float) -> dict[str, Any]:
    cells = result["cells"]
    naive = sum(c["budget"] for c in cells)  # every cell buying its own Q teacher answers
    floor = sum(max(c["budget"] for c in cells if c["strategy"] == s) for s in {c["strategy"] for c in cells})
    used = sum(c["paid_queries"] + c["reused_queries"] for c in cells)  # every role, as the cells used them
    stages: dict[str, list[float]] = {}
    for c in cells + result["baseline_cells"]:
        for stage, seconds in (c.get("wall_s") or {}).items():
            stages.setdefault(stage, []).append(seconds)
    return {
        "paid_teacher_queries": paid_teacher, "naive_teacher_sum_over_cells": naive,
        "paid_over_naive": round(paid_teacher / naive, 4), "floor_max_over_sum": round(floor / naive, 4),
        "target": round(floor / naive + MARGIN, 4), "target_met": paid_teacher / naive <= floor / naive + MARGIN,
        "issue_target_1_over_budgets": round(1 / len({c["budget"] for c in cells}) + MARGIN, 4),
        "paid_all_roles": result["paid"]["queries"], "used_all_roles": used,
        "paid_over_used_all_roles": round(result["paid"]["queries"] / used, 4) if used else None,
        "server_answered": answered, "grid_wall_s": round(wall, 1),
        "wall_s_per_cell": {c["id"]: c.get("wall_s") for c in cells + result["baseline_cells"]},
        "mean_wall_s_by_stage": {k: round(sum(v) / len(v), 2) for k, v in sorted(stages.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a reduced grid (a few minutes)")
    mode.add_argument("--gpu", action="store_true", help="a lent accelerator: bf16, larger grid and held-out set")
    ap.add_argument("--teacher", choices=("server", "local"), default="server")
    ap.add_argument("--dataset", default="gcd", help="a reasoning-gym dataset with numeric answers")
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    ap.add_argument("--keep", help="work in this folder (kept) instead of a temporary one")
    args = ap.parse_args()
    preset = PRESETS["gpu" if args.gpu else "quick" if args.quick else "full"]
    executor = {"parallel": 2, "num_cpus": 1, "num_gpus": 0}
    if args.gpu:
        import torch

        executor = {"parallel": max(1, torch.cuda.device_count()) * 2, "num_cpus": 4, "num_gpus": 0.5}
    from synthledger.testing.server import ServerConfig, run_in_thread

    folder = Path(args.keep or tempfile.mkdtemp(prefix="synthledger-bench-exp-"))
    folder.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{folder / 'store.db'}"
    answers = seed_answers(args.dataset, preset["seed_size"])
    answered = None
    if args.teacher == "server":
        with run_in_thread(ServerConfig(answers=answers, latency_ms=50)) as srv:
            grid = write_grid(folder, "server", srv.url, args.dataset, preset, executor)
            result, wall = run_grid(grid, store, args.executor)
            answered = srv.stats()["answered"]
    else:
        grid = write_grid(folder, "local", None, args.dataset, preset, executor)
        result, wall = run_grid(grid, store, args.executor)
    out = {"benchmark": "experiment", "mode": "gpu" if args.gpu else "quick" if args.quick else "full",
           "teacher": args.teacher, "dataset": args.dataset, "executor": args.executor, "preset": preset,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average": os.getloadavg(),
           **figures(result, paid_teacher_queries(folder / "store.db"), answered, wall),
           "table": {k: result[k] for k in ("summary", "baselines", "crossovers", "paid")}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    path = RESULTS.with_name(f"experiment-{out['mode']}.json") if out["mode"] != "full" else RESULTS
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("table", "wall_s_per_cell", "preset")}, indent=2))
    for row in result["summary"] + result["baselines"]:
        acc = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        ci = "" if row["ci_low"] is None else f" [{100 * row['ci_low']:.1f}-{100 * row['ci_high']:.1f}]"
        print(f"  {row['kind']:10} {str(row['strategy']):20} |S|={row['seed_size']} Q={row['budget']}: {acc}{ci}")
    for c in result["crossovers"]:
        print(f"  crossover |S|={c['seed_size']}: {c['ratio'] if c['ratio'] is None else round(c['ratio'], 2)} "
              f"{c['note']}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
