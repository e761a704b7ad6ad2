"""`show RUN`: one pass over a run's events for its status, spend and data statistics."""

from __future__ import annotations

from typing import Any

from ...store.eventstore import EventStore, RunInfo
from .diversity import distinct_ngram_ratio
from ..ledger.replay import replay


def summarize(store: EventStore, info: RunInfo) -> dict[str, Any]:
    if info.kind != "generate":
        return _summarize_other(store, info)
    state = replay(store.iter_events(info.id))
    snap = state.ledger.snapshot()
    rows_by_strategy: dict[str, int] = {}
    questions: list[str] = []
    answers: list[str] = []
    proposed: dict[str, tuple[str, str, str]] = {}
    for ev in store.iter_events(info.id, types=["sample_proposed", "sample_accepted"]):
        p = ev.payload
        if ev.type == "sample_proposed":
            proposed[p["sample_id"]] = (p["strategy"], p["question"], p["answer"])
        else:
            s = proposed.pop(p["sample_id"], None)
            if s:
                rows_by_strategy[s[0]] = rows_by_strategy.get(s[0], 0) + 1
                questions.append(s[1])
                answers.append(s[2])
    duplicates = sum(v for k, v in state.rejected.items() if "duplicate" in k)
    decided = state.accepted + sum(state.rejected.values())
    return {
        "id": info.id, "name": info.name, "status": info.status,
        "message": state.message,
        "spend": {"spent": snap["spent"], **{f"role {k}": v for k, v in snap["by_role"].items()}},
        "budget": snap["budget"],
        "queries": snap["counts"],
        "samples": {"accepted": state.accepted, "proposed": state.proposed,
                    "acceptance_rate": round(state.accepted / decided, 4) if decided else None,
                    "duplicates_dropped": duplicates, "rows_per_strategy": rows_by_strategy},
        "rejected": dict(sorted(state.rejected.items(), key=lambda kv: -kv[1])),
        "provider_faults": {f"fault {i}": f for i, f in enumerate(state.provider_faults, 1)},
        "diversity": {"questions_distinct_2gram": round(distinct_ngram_ratio(questions, 2), 4) if questions else None,
                      "answers_distinct_2gram": round(distinct_ngram_ratio(answers, 2), 4) if answers else None},
    }


def _summarize_other(store: EventStore, info: RunInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"id": info.id, "name": info.name, "status": info.status, "kind": info.kind,
                           "parent": info.parent_id}
    for ev in store.iter_events(info.id):
        if ev.type.endswith(("_started", "_finished", "_failed")):
            out[ev.type] = ev.payload
    return out
