"""How good a run's data is, per strategy and role: one pass over its events.

A ledger can be exact while the data is bad: answers cut off at `max_tokens`, the same answer
bought twice, final answers that disagree with the seeds' references. `data_quality(store, run_id)`
gives those figures for `show` (and `show --json`) and for any table that compares runs (the
experiment grid carries the same figures per cell), so a user sees when a grid compares noise.
"""

from __future__ import annotations

import re
from hashlib import blake2b
from typing import Any, Iterable

from ...store.eventstore import EventStore
from ..run.quality_gate import answer_query_id, high_truncation, low_agreement
from ..ledger.events import (QueryAbandoned, QueryReserved, QuerySettled, RunStarted, RunWarning,
                             SampleAccepted, SampleProposed, SampleRejected)

QUALITY_EVENTS = (RunStarted.TYPE, QueryReserved.TYPE, QuerySettled.TYPE, QueryAbandoned.TYPE, SampleProposed.TYPE,
                  SampleAccepted.TYPE, SampleRejected.TYPE, RunWarning.TYPE)
_NUMBERISH = re.compile(r"\S*\d\S*")
_PAREN = re.compile(r"\([^)]*\)")


def reason_kind(reason: str, kind: str | None = None) -> str:
    """What rejections are grouped by: the recorded kind, else the reason without its particulars
    ("final answer 520 differs from reference 9" -> "final answer differs from reference")."""
    if kind:
        return kind
    text = reason.split(": ", 1)[0] if ": " in reason else reason
    text = _PAREN.sub(" ", text).split(" of ")[0]
    text = " ".join(_NUMBERISH.sub(" ", text).split())
    return text[:60] or "unspecified"


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _task(config: dict[str, Any] | None) -> Any:
    """The run's task plugin (its answer extraction and comparison), or None if it cannot load."""
    try:
        from .. import host

        return host.get("tasks", ((config or {}).get("task") or {}).get("name", "gsm8k"))()
    except Exception:
        return None


def _agrees(task: Any, p: dict[str, Any]) -> bool:
    if task is None:
        final = (p.get("meta") or {}).get("final")
        return final is not None and str(final).strip() == str(p["reference"]).strip()
    return bool(task.equivalent(task.extract(p["answer"]), p["reference"]))


class _Figures:
    """The counts of one strategy (or of the whole run)."""

    def __init__(self) -> None:
        self.answers = self.accepted = self.with_reference = self.agreeing = 0
        self.truncated = self.duplicates = 0
        self.roles: dict[str, list[int]] = {}  # role -> [replies, cut off]
        self.rejections: dict[tuple[str, str], list[Any]] = {}  # (stage, kind) -> [count, example]

    def as_dict(self) -> dict[str, Any]:
        return {
            "answers": self.answers, "accepted": self.accepted,
            "with_reference": self.with_reference, "agreeing": self.agreeing,
            "agreement": _rate(self.agreeing, self.with_reference),
            "truncated": self.truncated, "truncation_rate": _rate(self.truncated, self.answers),
            "duplicates": self.duplicates, "duplicate_rate": _rate(self.duplicates, self.answers),
            "roles": {role: {"replies": n, "truncated": cut, "truncation_rate": _rate(cut, n)}
                      for role, (n, cut) in sorted(self.roles.items())},
            "rejections": _grouped(self.rejections),
        }


def _grouped(table: dict[tuple[str, str], list[Any]]) -> list[dict[str, Any]]:
    rows = [{"stage": stage, "kind": kind, "count": count, "example": example}
            for (stage, kind), (count, example) in table.items()]
    return sorted(rows, key=lambda r: (-r["count"], r["stage"], r["kind"]))


class _Fold:
    def __init__(self) -> None:
        self.task: Any = None
        self.by_strategy: dict[str, _Figures] = {}
        self.total = _Figures()
        self.queries: dict[str, tuple[str, str]] = {}  # open query id -> (strategy, role)
        self.cut: set[str] = set()  # query ids whose reply was cut off at max_tokens
        self.open_samples: dict[str, str] = {}  # proposed, undecided sample id -> strategy
        self.seen: dict[bytes, str | None] = {}  # (question, answer) digest -> its first answer query
        self.warnings: dict[str, str] = {}

    def both(self, strategy: str) -> tuple[_Figures, _Figures]:
        return self.by_strategy.setdefault(strategy, _Figures()), self.total

    def apply(self, t: str, p: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{t}", None)
        if handler is not None:
            handler(p)

    def _on_run_started(self, p: dict[str, Any]) -> None:
        self.task = _task(p.get("config"))

    def _on_query_reserved(self, p: dict[str, Any]) -> None:
        self.queries[p["query_id"]] = (p.get("strategy", ""), p.get("role", "teacher"))

    def _on_query_settled(self, p: dict[str, Any]) -> None:
        strategy, role = self.queries.pop(p["query_id"], ("", "teacher"))
        cut = p.get("finish_reason") == "length"
        if cut:
            self.cut.add(p["query_id"])
        for fig in self.both(strategy):
            counts = fig.roles.setdefault(role, [0, 0])
            counts[0] += 1
            counts[1] += cut

    def _on_query_abandoned(self, p: dict[str, Any]) -> None:
        self.queries.pop(p["query_id"], None)

    def _on_sample_proposed(self, p: dict[str, Any]) -> None:
        strategy = p["strategy"]
        if p["sample_id"] in self.open_samples:  # proposed again by a resume (its item never ended): counted once
            return
        self.open_samples[p["sample_id"]] = strategy
        key = blake2b(f"{' '.join(p['question'].split())}\0{' '.join(p['answer'].split())}".encode(),
                      digest_size=16).digest()
        qid = answer_query_id(p.get("query_ids") or [], p.get("roles") or {})
        copy = key in self.seen and self.seen[key] != qid  # a reused query's answer is not a bought copy
        self.seen.setdefault(key, qid)
        cut = any(q in self.cut for q in p.get("query_ids") or ())
        # Agreement is judged on whole answers a teacher wrote: a cut-off one has lost its final
        # answer (counted as truncated instead), and a seed's own answer kept by a rephrase
        # (no teacher query) would only agree with itself.
        referenced = p.get("reference") is not None and not cut and qid is not None
        agrees = referenced and _agrees(self.task, p)
        for fig in self.both(strategy):
            fig.answers += 1
            fig.duplicates += copy
            fig.truncated += cut
            fig.with_reference += referenced
            fig.agreeing += agrees

    def _on_sample_accepted(self, p: dict[str, Any]) -> None:
        strategy = self.open_samples.pop(p["sample_id"], None)
        if strategy is not None:
            for fig in self.both(strategy):
                fig.accepted += 1

    def _on_sample_rejected(self, p: dict[str, Any]) -> None:
        if p.get("sample_id"):
            self.open_samples.pop(p["sample_id"], None)
        key = (p.get("stage") or "?", reason_kind(p.get("reason", ""), p.get("kind")))
        for fig in self.both(p.get("strategy", "")):
            entry = fig.rejections.setdefault(key, [0, " ".join(str(p.get("reason", "")).split())[:160]])
            entry[0] += 1

    def _on_run_warning(self, p: dict[str, Any]) -> None:
        self.warnings.setdefault(p["kind"], p["message"])


def fold_quality(events: Iterable[Any]) -> dict[str, Any]:
    """`data_quality` over any iterable of stored events (type, payload)."""
    fold = _Fold()
    for ev in events:
        fold.apply(ev.type, ev.payload)
    overall = fold.total.as_dict()
    return {
        "overall": overall,
        "strategies": {name: fig.as_dict() for name, fig in sorted(fold.by_strategy.items())},
        "warnings": _warnings(overall, fold.warnings),
    }


def data_quality(store: EventStore, run_id: str) -> dict[str, Any]:
    """Per strategy and role, and for the whole run: agreement of the teacher's final answers with
    the seeds' references (where a seed has one, among answers not cut off), the share of replies cut off at max_tokens, the
    share of exact-duplicate answers, rejections grouped by kind with an example each, and warnings."""
    return fold_quality(store.iter_events(run_id, types=list(QUALITY_EVENTS)))


def _warnings(overall: dict[str, Any], recorded: dict[str, str]) -> list[dict[str, str]]:
    """Each with its kind (as the run recorded it), so a reader of `show --json` can tell them apart
    without matching their words. The live warnings judged the first answers; the whole run's figures
    below say it better, under the same kinds."""
    out = [{"kind": kind, "message": message} for kind, message in recorded.items()
           if kind not in ("low_agreement", "truncated_replies")]
    n, agreeing = overall["with_reference"], overall["agreeing"]
    if low_agreement(agreeing, n):
        out.append({"kind": "low_agreement", "message": (
            f"low agreement: the teacher's final answers agree with the seeds' references in only "
            f"{agreeing} of {n} answers ({agreeing / n:.0%}); check the seeds' answers, [task] name, the "
            "answer template and max_tokens before training on this data")})
    for role, r in overall["roles"].items():
        if high_truncation(r["truncated"], r["replies"]):
            out.append({"kind": "truncated_replies", "message": (
                f"{r['truncated']} of {r['replies']} {role} replies were cut off at max_tokens "
                f"({r['truncated'] / r['replies']:.0%}); raise max_tokens for the {role}")})
    return out


def brief(quality: dict[str, Any]) -> dict[str, Any]:
    """The whole run's figures a grid shows per cell (counts kept, so cells can be pooled)."""
    o = quality["overall"]
    rejected = sum(r["count"] for r in o["rejections"])
    return {"answers": o["answers"], "accepted": o["accepted"], "rejected": rejected,
            "with_reference": o["with_reference"], "agreeing": o["agreeing"], "agreement": o["agreement"],
            "truncated": o["truncated"], "truncation_rate": o["truncation_rate"],
            "duplicates": o["duplicates"], "duplicate_rate": o["duplicate_rate"]}


def pooled(briefs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Several cells' briefs as one (rates recomputed from the summed counts); None if none has one."""
    briefs = [b for b in briefs if b]
    if not briefs:
        return None
    total = {k: sum(b.get(k, 0) for b in briefs)
             for k in ("answers", "accepted", "rejected", "with_reference", "agreeing", "truncated", "duplicates")}
    return {**total, "agreement": _rate(total["agreeing"], total["with_reference"]),
            "truncation_rate": _rate(total["truncated"], total["answers"]),
            "duplicate_rate": _rate(total["duplicates"], total["answers"])}
