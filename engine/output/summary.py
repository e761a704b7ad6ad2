"""`show RUN`: a run's status and spend (the replay fold), data statistics (the dataset fold) and quality.

The summary is plain data (what `show --json` prints); `show_view` renders it for a person.
Training and evaluation runs get their own shapes, with floats rounded (their paths are recorded
absolute).
"""

from __future__ import annotations

from typing import Any

from ...store.eventstore import EventStore, RunInfo
from ..ledger.events import (EvalFinished, RunFinished, RunStarted, TrainingFailed, TrainingFinished,
                             TrainingProgress, TrainingStarted)
from ..ledger.replay import replay
from .dataset import accepted_rows
from .diversity import distinct_ngram_ratio
from .quality import data_quality


def summarize(store: EventStore, info: RunInfo) -> dict[str, Any]:
    if info.kind == "train":
        return _summarize_train(store, info)
    if info.kind == "eval":
        return _summarize_eval(store, info)
    if info.kind != "generate":
        return _summarize_other(store, info)
    state = replay(store.iter_events(info.id))
    snap = state.ledger.snapshot()
    rows_by_strategy: dict[str, int] = {}
    questions: list[str] = []
    answers: list[str] = []
    unchecked = 0  # accepted although the verifier could not check them (no reference answer)
    for row in accepted_rows(store, info.id):  # the dataset fold: what `export` writes
        unchecked += bool((row["verification"]["details"] or {}).get("unchecked"))
        rows_by_strategy[row["strategy"]] = rows_by_strategy.get(row["strategy"], 0) + 1
        questions.append(row["question"])
        answers.append(row["answer"])
    quality = data_quality(store, info.id)
    rejected = {f"{g['stage']}: {g['kind']}": g["count"] for g in quality["overall"]["rejections"]}
    duplicates = sum(v for k, v in rejected.items() if "duplicate" in k)
    return {
        "id": info.id, "name": info.name, "status": info.status,
        "message": state.message,
        "spend": {"spent": snap["spent"], **{f"role {k}": v for k, v in snap["by_role"].items()}},
        "budget": snap["budget"],
        "queries": snap["counts"],
        "samples": {"accepted": state.accepted, "proposed": state.proposed,
                    "acceptance_rate": acceptance_rate(state.accepted, state.proposed),
                    "duplicates_dropped": duplicates, "accepted_unchecked": unchecked,
                    "rows_per_strategy": rows_by_strategy},
        "rejected": rejected,  # "stage: kind" -> count, most first
        "provider_faults": {f"fault {i}": f for i, f in enumerate(state.provider_faults, 1)},
        "diversity": {"questions_distinct_2gram": round(distinct_ngram_ratio(questions, 2), 4) if questions else None,
                      "answers_distinct_2gram": round(distinct_ngram_ratio(answers, 2), 4) if answers else None},
        "data_quality": quality,
    }


def acceptance_rate(accepted: int, proposed: int) -> float | None:
    """Accepted samples of those proposed, as the name and the `proposed` beside it say; None before any.
    It was accepted / (accepted + rejected): undecided samples of a stopped run left out, and rejections
    of items that never made a sample (a failed query, an unparsable reply) counted in, so it agreed
    with neither figure shown beside it."""
    return round(accepted / proposed, 4) if proposed else None


def _rounded(value: Any, digits: int = 4) -> Any:
    """Floats to `digits` significant places, recursively: what a person reads, not float noise."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def _header(info: RunInfo, store: EventStore) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The common keys, and the payload of each event type (the last one of a type wins)."""
    out: dict[str, Any] = {"id": info.id, "name": info.name, "status": info.status, "kind": info.kind,
                           "parent": info.parent_id}
    payloads: dict[str, dict[str, Any]] = {}
    curve: list[dict[str, Any]] = []
    for ev in store.iter_events(info.id):
        if ev.type == TrainingProgress.TYPE:
            curve.append(ev.payload)
        else:
            payloads[ev.type] = ev.payload
    payloads["_curve"] = {"points": curve}
    out["message"] = payloads.get(RunFinished.TYPE, {}).get("message", "")
    return out, payloads


def _summarize_train(store: EventStore, info: RunInfo) -> dict[str, Any]:
    out, ev = _header(info, store)
    config = ev.get(RunStarted.TYPE, {}).get("config", {})
    started, finished = ev.get(TrainingStarted.TYPE, {}), ev.get(TrainingFinished.TYPE, {})
    out["source"] = config.get("source")
    out["training"] = _rounded({k: started.get(k) for k in ("student", "student_path", "rows", "used", "dropped",
                                                            "truncated", "tokens") if k in started})
    out["hyperparameters"] = _rounded(started.get("hyperparameters", {}))
    out["result"] = _rounded({k: finished.get(k) for k in ("steps", "epochs", "final_loss", "mean_loss", "tokens",
                                                           "tokens_per_s", "wall_s", "device") if k in finished})
    out["artifacts"] = dict(finished.get("artifacts") or {})  # absolute since runs record them so
    curve = ev["_curve"]["points"]
    out["loss_curve"] = [{"step": p.get("step"), "loss": _rounded(p.get("loss"))} for p in curve]
    if TrainingFailed.TYPE in ev:
        out["failure"] = ev[TrainingFailed.TYPE].get("reason")
    return out


def _summarize_eval(store: EventStore, info: RunInfo) -> dict[str, Any]:
    out, ev = _header(info, store)
    config = ev.get(RunStarted.TYPE, {}).get("config", {})
    finished = ev.get(EvalFinished.TYPE, {})
    out["evaluated"] = {"model": config.get("model"), "heldout": config.get("heldout"), "task": config.get("task"), "limit": config.get("limit"),
                        "excluded_from_run": config.get("excluded_from_run")}
    out["result"] = _rounded({k: finished.get(k) for k in ("accuracy", "correct", "n", "examples_per_s",
                                                           "output_tokens_per_s", "wall_s", "device")
                              if k in finished})
    out["predictions"] = finished.get("predictions_path") or config.get("predictions")
    return out


def _summarize_other(store: EventStore, info: RunInfo) -> dict[str, Any]:
    out, ev = _header(info, store)
    for type_, payload in ev.items():
        if type_.endswith(("_started", "_finished", "_failed")):
            out[type_] = _rounded(payload)
    return out
