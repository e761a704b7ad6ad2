"""The dataset is a projection of the run's events: accepted samples, with their provenance."""

from __future__ import annotations

from typing import Any, Iterator

from ...store.eventstore import EventStore
from ..ledger.events import RunStarted, SampleAccepted, SampleProposed, SampleRejected

DATASET_TYPES = (SampleProposed.TYPE, SampleAccepted.TYPE, RunStarted.TYPE)


def accepted_rows(store: EventStore, run_id: str, *, include_seeds: bool = False) -> Iterator[dict[str, Any]]:
    """Rows in the order their samples were accepted. Proposals wait in memory only until decided."""
    proposed: dict[str, dict[str, Any]] = {}
    config: dict[str, Any] | None = None
    for ev in store.iter_events(run_id, types=DATASET_TYPES + (SampleRejected.TYPE,)):
        p = ev.payload
        if ev.type == RunStarted.TYPE:
            config = p.get("config")
        elif ev.type == SampleProposed.TYPE:
            proposed[p["sample_id"]] = p
        elif ev.type == SampleRejected.TYPE:
            if p.get("sample_id"):
                proposed.pop(p["sample_id"], None)
        elif ev.type == SampleAccepted.TYPE:
            s = proposed.pop(p["sample_id"], None)
            if s is None:
                continue
            yield {
                "run_id": run_id, "sample_id": s["sample_id"], "question": s["question"], "answer": s["answer"],
                "strategy": s["strategy"], "seed_id": s.get("seed_id"), "reference": s.get("reference"),
                "role": "teacher", "model": (s.get("models") or {}).get("teacher"),
                "models": s.get("models") or {}, "query_ids": s.get("query_ids", []) + p.get("query_ids", []),
                "finish_reason": s.get("finish_reason"),
                "verification": {"accepted": True, "reason": p.get("reason", ""), "details": p.get("details", {})},
            }
    if include_seeds and config is not None:
        yield from _seed_rows(config, run_id)


def _seed_rows(config: dict[str, Any], run_id: str) -> Iterator[dict[str, Any]]:
    from ..run.assemble import build_parts
    from ..run.config import RunConfig

    cfg = RunConfig.model_validate(config)
    for seed in build_parts(cfg).seeds:
        if seed.answer:
            yield {"run_id": run_id, "sample_id": f"seed-{seed.id}", "question": seed.question,
                   "answer": seed.answer, "strategy": "seed", "seed_id": seed.id, "reference": None,
                   "role": "seed", "model": None, "models": {}, "query_ids": [], "finish_reason": None,
                   "verification": {"accepted": True, "reason": "seed", "details": {}}}
