"""Rebuild a run's state from its events: what `--resume` starts from and what `show` reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .ledger import BudgetSpec, Ledger, budget_from_dict
from .events import (ItemDone, ProviderFault, QueryAbandoned, QueryReserved, QueryReused, QuerySettled,
                     QuestionAdmitted, RunFinished, RunResumed, RunStarted, SampleAccepted, SampleProposed,
                     SampleRejected)


@dataclass
class RunState:
    ledger: Ledger
    done_items: set[str] = field(default_factory=set)
    admitted: list[tuple[str, str]] = field(default_factory=list)  # (item, question) of finished items
    answered: dict[str, str] = field(default_factory=dict)  # query id -> text, for unfinished items
    finish_reasons: dict[str, str | None] = field(default_factory=dict)  # query id -> finish reason, same items
    config: dict[str, Any] | None = None  # as first recorded: what the plan is checked against
    latest_config: dict[str, Any] | None = None  # as last in effect (a resume may change the budget)
    config_dir: str | None = None
    plan_hash: str | None = None
    status: str | None = None
    message: str = ""
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason (shortened) -> count
    proposed: int = 0
    items_by_outcome: dict[str, int] = field(default_factory=dict)
    provider_faults: list[str] = field(default_factory=list)  # "seq N: message", as recorded


def _reason_key(reason: str) -> str:
    return reason.split(" of ")[0].split(":")[0].split("(")[0].strip()[:60] or "unspecified"


def replay(events: Iterable[Any], spec: BudgetSpec | None = None) -> RunState:
    """One pass, memory bounded by what is still open (unfinished items, open queries)."""
    ledger = Ledger(spec or BudgetSpec())
    state = RunState(ledger=ledger)
    admitted_open: dict[str, str] = {}
    texts_open: dict[str, dict[str, str]] = {}
    finish_open: dict[str, dict[str, str | None]] = {}
    query_item: dict[str, str] = {}
    for ev in events:
        t, p = ev.type, ev.payload
        if t == RunStarted.TYPE:
            state.config = p.get("config")
            state.plan_hash = p.get("plan_hash")
        if t in (RunStarted.TYPE, RunResumed.TYPE) and p.get("config") is not None:
            state.latest_config = p["config"]
            state.config_dir = p.get("config_dir") or state.config_dir
        if t in (RunStarted.TYPE, RunResumed.TYPE) and spec is None and p.get("budget"):
            ledger.spec = budget_from_dict(p["budget"])
        ledger.apply(ev.seq, t, p)
        if t == QueryReserved.TYPE:
            query_item[p["query_id"]] = p.get("item", "")
        elif t == QuerySettled.TYPE:
            item = query_item.pop(p["query_id"], None)
            if item is not None and item not in state.done_items:
                texts_open.setdefault(item, {})[p["query_id"]] = p.get("text", "")
                finish_open.setdefault(item, {})[p["query_id"]] = p.get("finish_reason")
        elif t == QueryReused.TYPE:
            item = p.get("item", "")
            if item not in state.done_items:
                texts_open.setdefault(item, {})[p["query_id"]] = p.get("text", "")
                finish_open.setdefault(item, {})[p["query_id"]] = p.get("finish_reason")
        elif t == QueryAbandoned.TYPE:
            query_item.pop(p["query_id"], None)
        elif t == QuestionAdmitted.TYPE:
            admitted_open[p["item"]] = p["question"]
        elif t == SampleProposed.TYPE:
            state.proposed += 1
        elif t == SampleAccepted.TYPE:
            state.accepted += 1
        elif t == SampleRejected.TYPE:
            k = f"{p.get('stage', '?')}: {_reason_key(p.get('reason', ''))}"
            state.rejected[k] = state.rejected.get(k, 0) + 1
        elif t == ItemDone.TYPE:
            item = p["item"]
            state.done_items.add(item)
            texts_open.pop(item, None)
            finish_open.pop(item, None)
            q = admitted_open.pop(item, None)
            if q is not None:
                state.admitted.append((item, q))
            state.items_by_outcome[p["outcome"]] = state.items_by_outcome.get(p["outcome"], 0) + 1
        elif t == RunFinished.TYPE:
            state.status = p["status"]
            state.message = p.get("message", "")
        elif t == RunResumed.TYPE:
            state.status = None
        elif t == ProviderFault.TYPE:
            state.provider_faults.append(f"seq {ev.seq}: {p.get('message', '')}")
    for texts in texts_open.values():
        state.answered.update(texts)
    for reasons in finish_open.values():
        state.finish_reasons.update(reasons)
    return state
