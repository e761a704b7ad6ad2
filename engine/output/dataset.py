"""The dataset is a projection of the run's events: accepted samples, with their provenance."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from ...store.eventstore import EventStore
from ..ledger.events import RunStarted, SampleAccepted, SampleProposed, SampleRejected, recorded_seeds

class _Dataset:
    """The fold: proposals wait in memory only until they are decided."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.proposed: dict[str, dict[str, Any]] = {}
        self.started: dict[str, Any] | None = None

    def _started(self, p: dict[str, Any]) -> None:
        self.started = p

    def _proposed(self, p: dict[str, Any]) -> None:
        self.proposed[p["sample_id"]] = p

    def _rejected(self, p: dict[str, Any]) -> None:
        if p.get("sample_id"):
            self.proposed.pop(p["sample_id"], None)

    def _accepted(self, p: dict[str, Any]) -> dict[str, Any] | None:
        s = self.proposed.pop(p["sample_id"], None)
        if s is None:
            return None
        role = _answer_role(s)
        return {
            "run_id": self.run_id, "sample_id": s["sample_id"], "question": s["question"], "answer": s["answer"],
            "strategy": s["strategy"], "seed_id": s.get("seed_id"), "reference": s.get("reference"),
            "role": role, "model": (s.get("models") or {}).get(role),
            "models": s.get("models") or {}, "query_ids": s.get("query_ids", []) + p.get("query_ids", []),
            "finish_reason": s.get("finish_reason"), "source_seed_ids": _source_seed_ids(s),
            "verification": {"accepted": True, "reason": p.get("reason", ""), "details": p.get("details", {})},
        }


def _source_seed_ids(proposal: dict[str, Any]) -> list[str]:
    """The seeds a sample was made from: its own, or the examples a new question was written from
    (its seed_id is null: no one seed is its source). A user who must drop everything derived from
    some seeds (found in an eval set, say) can then find the new questions too."""
    examples = (proposal.get("meta") or {}).get("examples")
    if examples:
        return [str(e) for e in examples]
    return [proposal["seed_id"]] if proposal.get("seed_id") is not None else []


def _answer_role(proposal: dict[str, Any]) -> str | None:
    """Who wrote the answer: the role of the query the run took it from. An answer no query wrote
    (a rephrase keeping its seed's answer) is the seed's, not the augmenter's whose rewrite was the
    sample's only query. Runs recorded before `answer_query_id` fall back to the last query's role
    (the verifier's queries are added on acceptance), and a sample with no query to the teacher."""
    qids, roles = proposal.get("query_ids") or [], proposal.get("roles") or {}
    if "answer_query_id" in proposal:
        qid = proposal["answer_query_id"]
        if qid is not None:
            return roles.get(qid, "teacher")
        return "seed" if proposal.get("seed_id") is not None else None
    return roles.get(qids[-1], "teacher") if qids else "teacher"


_HANDLERS: dict[str, Callable[[_Dataset, dict[str, Any]], dict[str, Any] | None]] = {
    RunStarted.TYPE: _Dataset._started,
    SampleProposed.TYPE: _Dataset._proposed,
    SampleRejected.TYPE: _Dataset._rejected,
    SampleAccepted.TYPE: _Dataset._accepted,
}


def accepted_rows(store: EventStore, run_id: str, *, include_seeds: bool = False) -> Iterator[dict[str, Any]]:
    """Rows in the order their samples were accepted."""
    fold = _Dataset(run_id)
    for ev in store.iter_events(run_id, types=list(_HANDLERS)):
        row = _HANDLERS[ev.type](fold, ev.payload)
        if row is not None:
            yield row
    if include_seeds and fold.started is not None and fold.started.get("config") is not None:
        yield from _seed_rows(run_seeds(fold.started), run_id)


def run_seeds(started: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed set a `run_started` payload recorded; for a run recorded before it carried them,
    the seeds drawn again from its config (relative paths resolved where the config was)."""
    seeds = recorded_seeds(started)
    if seeds is not None:
        return seeds
    from ..run.assemble import build_parts
    from ..run.config import RunConfig

    cfg = RunConfig.model_validate({**started["config"], "base_dir": started.get("config_dir") or "."})
    return [{"id": s.id, "question": s.question, "answer": s.answer} for s in build_parts(cfg).seeds]


def _seed_rows(seeds: list[dict[str, Any]], run_id: str) -> Iterator[dict[str, Any]]:
    for seed in seeds:
        if seed.get("answer"):
            yield {"run_id": run_id, "sample_id": f"seed-{seed['id']}", "question": seed["question"],
                   "answer": seed["answer"], "strategy": "seed", "seed_id": seed["id"], "reference": None,
                   "role": "seed", "model": None, "models": {}, "query_ids": [], "finish_reason": None,
                   "source_seed_ids": [seed["id"]],
                   "verification": {"accepted": True, "reason": "seed", "details": {}}}
