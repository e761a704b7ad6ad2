"""One cell's stages: its generation (in the driver, one at a time: generation cells share a
provider's rate limit) and its train + eval job (in a worker process or a Ray task).

The job is a plain function of a plain dict, so the local pool and Ray run the very same code and
produce the same scores for a deterministic student.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ...store.eventstore import EventStore
from ...store.records import FINISHED
from ..ledger.replay import replay
from ..output.quality import QUALITY_EVENTS, brief, fold_quality
from ..run.config import RunConfig

UNFINISHED = ("running", "interrupted", "failed")


@dataclass
class Generated:
    run_id: str
    status: str
    message: str
    rows: int
    paid: dict[str, Any]  # {queries, input_tokens, output_tokens, usd}
    reused: dict[str, Any]
    wall_s: float
    quality: dict[str, Any] = field(default_factory=dict)  # output.quality.brief of the run
    lost: int = 0  # queries out when a process was killed or a connection dropped: counted as spent, never answered

    @property
    def ok(self) -> bool:
        return self.status in FINISHED


def generation_outcome(store: EventStore, run_id: str, wall_s: float = 0.0) -> Generated:
    """What a (finished) generation run produced and cost, from its events, read once: the quality
    figures fold the same stream the replay reads."""
    quality: list[Any] = []

    def tee(events: Iterable[Any]) -> Iterator[Any]:
        for ev in events:
            if ev.type in QUALITY_EVENTS:
                quality.append(ev)
            yield ev

    state = replay(tee(store.iter_events(run_id)))
    snap = state.ledger.snapshot()
    info = store.get_run(run_id)
    return Generated(run_id, state.status or info.status, state.message, state.accepted,
                     snap["paid"], snap["reused"], round(wall_s, 3), brief(fold_quality(quality)),
                     int(snap["counts"].get("lost", 0)))


def run_generation(cfg: RunConfig, store: EventStore, run_id: str | None,
                   on_start: Callable[[str, Any], None]) -> Generated:
    """Run (or resume) a cell's generation to its end. `on_start(run_id, runner)` is called once
    the run exists and before any query is sent, so the experiment links the run first."""
    from ..run.collector import tuned_for_a_run
    from ..run.eventloop import drive, use_uvloop
    from ..run.launch import _run_with_signals
    from ..run.runner import Runner

    started = time.perf_counter()
    uvloop = use_uvloop()
    if run_id is None:  # started by a process killed before the experiment recorded it: continue that one
        earlier = [r for r in store.list_runs(name=cfg.run.name, kind="generate") if r.last_seq > 0]
        run_id = earlier[-1].id if earlier else None
    if run_id is not None and store.get_run(run_id).status not in UNFINISHED:
        on_start(run_id, None)
        return generation_outcome(store, run_id)
    runner = Runner(cfg, store, show_progress=False)
    run_id = runner.start_resume(run_id) if run_id is not None else runner.start_new()
    on_start(run_id, runner)
    try:
        with tuned_for_a_run():
            drive(_run_with_signals, runner, uvloop=uvloop)
    finally:
        runner.abandon_unstarted("the experiment could not drive this generation (its event loop failed)")
    return generation_outcome(store, run_id, time.perf_counter() - started)


def _outcomes(predictions: Path, heldout: list[dict[str, str]]) -> str:
    """One character per held-out example: 1 correct, 0 wrong, - left out of this cell's scoring."""
    from ...plugins.evaluators.heldout import normalize_question

    position: dict[str, list[int]] = {}
    for i, ex in enumerate(heldout):
        position.setdefault(normalize_question(ex["question"]), []).append(i)
    marks = ["-"] * len(heldout)
    with predictions.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for i in position.get(normalize_question(row["question"]), []):
                marks[i] = "1" if row["correct"] else "0"
    return "".join(marks)


def _quiet_worker(n: float) -> None:
    """A worker's share of the machine (`num_cpus` torch threads) and no progress bars of its own:
    the driver's view is the one the user reads."""
    threads = max(1, int(n))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def kept_training(store: EventStore, generate_run: str, cfg: Any, student_dir: Path) -> dict[str, Any] | None:
    """The cell's training, if a job stopped after it completed (in its evaluation, say): the same
    data and train config, run to `completed`, its student still in the cell's folder with that
    run's provenance. Training is the long stage; a rerun need not pay for it twice."""
    want = cfg.model_dump(mode="json")
    for info in reversed(store.list_runs(kind="train")):
        if info.parent_id != generate_run or info.status != "completed" or info.config.get("train") != want:
            continue
        out_dir = Path(str(info.config.get("out_dir", "")))
        if out_dir != student_dir and not out_dir.name.startswith(f"{student_dir.name}-"):
            continue
        try:
            kept = json.loads((out_dir / "provenance.json").read_text(encoding="utf-8")).get("train_run_id")
        except (OSError, ValueError, AttributeError):
            continue
        if kept == info.id:
            rows = [ev.payload.get("rows") for ev in store.iter_events(info.id, types=["training_finished"])]
            return {"run_id": info.id, "out_dir": str(out_dir), "rows": rows[-1] if rows else 0}
    return None


def train_eval_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train the cell's student (unless it is the untrained baseline) and score it on the held-out
    set. A restart begins from scratch (the student folder is cleared first), unless the cell's
    training had completed: then only the evaluation runs again."""
    from ..student.runs import TrainConfig, eval_run, train_run

    _quiet_worker(job.get("num_cpus", 1))
    store = EventStore(job["store"])
    wall: dict[str, float] = {}
    out = {"cell": job["cell"], "train_run": None, "rows": 0}
    model = job["student"]
    if job.get("generate_run"):
        train_cfg = TrainConfig.model_validate(job["train"])
        student_dir = Path(job["train"]["output"]["dir"]).expanduser().resolve()
        trained = kept_training(store, job["generate_run"], train_cfg, student_dir)
        if trained is None:
            shutil.rmtree(student_dir, ignore_errors=True)
            t0 = time.perf_counter()
            trained = train_run(job["generate_run"], train_cfg, store, progress=False)
            wall["train"] = round(time.perf_counter() - t0, 3)
        out.update(train_run=trained["run_id"], rows=int(trained.get("rows") or 0))
        model = trained["out_dir"]
    ev = job["eval"]
    t0 = time.perf_counter()
    scored = eval_run(model, job["heldout_path"], store, task_name=job["task"], evaluator=ev["evaluator"],
                      out_path=Path(job["predictions"]), options=ev["options"], progress=False)
    wall["eval"] = round(time.perf_counter() - t0, 3)
    heldout = [json.loads(line) for line in Path(job["heldout_path"]).read_text(encoding="utf-8").splitlines()]
    outcomes = _outcomes(Path(job["predictions"]), heldout)
    store.close()
    return {**out, "eval_run": scored["run_id"], "outcomes": outcomes, "correct": outcomes.count("1"),
            "n": outcomes.count("1") + outcomes.count("0"), "wall_s": wall}
