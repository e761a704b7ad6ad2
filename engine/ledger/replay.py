"""Rebuild a run's state from its events: what `--resume` starts from and what `show` reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

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


class _Replay:
    """The fold. Besides the ledger it keeps only what is still open: answers (and why they ended)
    and admitted questions of unfinished items, and which item each open query belongs to."""

    def __init__(self, spec: BudgetSpec | None) -> None:
        self.fixed_spec = spec is not None
        self.state = RunState(ledger=Ledger(spec or BudgetSpec()))
        self.admitted_open: dict[str, str] = {}
        self.texts_open: dict[str, dict[str, str]] = {}
        self.finish_open: dict[str, dict[str, str | None]] = {}
        self.query_item: dict[str, str] = {}
        # Items with a proposal and no item_done yet: a resume runs such an item again and it proposes
        # its sample again, which is still one sample (QA: 4 of 8 "proposed" where 4 of 4 were).
        self.proposing: set[str] = set()

    def apply(self, seq: int, type_: str, p: dict[str, Any]) -> None:
        before, after = _HANDLERS.get(type_, _NONE)
        if before is not None:
            before(self, seq, p)
        self.state.ledger.apply(seq, type_, p)
        if after is not None:
            after(self, seq, p)

    # before the ledger: a session's config and budget decide how the ledger counts what follows
    def _session(self, seq: int, p: dict[str, Any]) -> None:
        if p.get("config") is not None:
            self.state.latest_config = p["config"]
            self.state.config_dir = p.get("config_dir") or self.state.config_dir
        if not self.fixed_spec and p.get("budget"):
            self.state.ledger.spec = budget_from_dict(p["budget"])

    def _started(self, seq: int, p: dict[str, Any]) -> None:
        self.state.config = p.get("config")
        self.state.plan_hash = p.get("plan_hash")
        self._session(seq, p)

    # after the ledger
    def _resumed(self, seq: int, p: dict[str, Any]) -> None:
        self.state.status = None

    def _reserved(self, seq: int, p: dict[str, Any]) -> None:
        self.query_item[p["query_id"]] = p.get("item", "")

    def _answered(self, item: str, p: dict[str, Any]) -> None:
        if item not in self.state.done_items:
            self.texts_open.setdefault(item, {})[p["query_id"]] = p.get("text", "")
            self.finish_open.setdefault(item, {})[p["query_id"]] = p.get("finish_reason")

    def _settled(self, seq: int, p: dict[str, Any]) -> None:
        item = self.query_item.pop(p["query_id"], None)
        if item is not None:
            self._answered(item, p)

    def _reused(self, seq: int, p: dict[str, Any]) -> None:
        self._answered(p.get("item", ""), p)

    def _abandoned(self, seq: int, p: dict[str, Any]) -> None:
        self.query_item.pop(p["query_id"], None)

    def _admitted(self, seq: int, p: dict[str, Any]) -> None:
        self.admitted_open[p["item"]] = p["question"]

    def _proposed(self, seq: int, p: dict[str, Any]) -> None:
        if p["item"] not in self.proposing:
            self.proposing.add(p["item"])
            self.state.proposed += 1

    def _accepted(self, seq: int, p: dict[str, Any]) -> None:
        self.state.accepted += 1

    def _rejected(self, seq: int, p: dict[str, Any]) -> None:
        k = f"{p.get('stage', '?')}: {_reason_key(p.get('reason', ''))}"
        self.state.rejected[k] = self.state.rejected.get(k, 0) + 1

    def _item_done(self, seq: int, p: dict[str, Any]) -> None:
        state, item = self.state, p["item"]
        state.done_items.add(item)
        self.proposing.discard(item)
        self.texts_open.pop(item, None)
        self.finish_open.pop(item, None)
        q = self.admitted_open.pop(item, None)
        if q is not None:
            state.admitted.append((item, q))
        state.items_by_outcome[p["outcome"]] = state.items_by_outcome.get(p["outcome"], 0) + 1

    def _finished(self, seq: int, p: dict[str, Any]) -> None:
        self.state.status = p["status"]
        self.state.message = p.get("message", "")

    def _provider_fault(self, seq: int, p: dict[str, Any]) -> None:
        self.state.provider_faults.append(f"seq {seq}: {p.get('message', '')}")

    def result(self) -> RunState:
        for texts in self.texts_open.values():
            self.state.answered.update(texts)
        for reasons in self.finish_open.values():
            self.state.finish_reasons.update(reasons)
        return self.state


Handler = Callable[[_Replay, int, dict[str, Any]], None]
# event type -> (handler before the ledger folds the event, handler after it)
_HANDLERS: dict[str, tuple[Handler | None, Handler | None]] = {
    RunStarted.TYPE: (_Replay._started, None),
    RunResumed.TYPE: (_Replay._session, _Replay._resumed),
    QueryReserved.TYPE: (None, _Replay._reserved),
    QuerySettled.TYPE: (None, _Replay._settled),
    QueryReused.TYPE: (None, _Replay._reused),
    QueryAbandoned.TYPE: (None, _Replay._abandoned),
    QuestionAdmitted.TYPE: (None, _Replay._admitted),
    SampleProposed.TYPE: (None, _Replay._proposed),
    SampleAccepted.TYPE: (None, _Replay._accepted),
    SampleRejected.TYPE: (None, _Replay._rejected),
    ItemDone.TYPE: (None, _Replay._item_done),
    RunFinished.TYPE: (None, _Replay._finished),
    ProviderFault.TYPE: (None, _Replay._provider_fault),
}
_NONE: tuple[None, None] = (None, None)


def replay(events: Iterable[Any], spec: BudgetSpec | None = None) -> RunState:
    """One pass, memory bounded by what is still open (unfinished items, open queries)."""
    fold = _Replay(spec)
    for ev in events:
        fold.apply(ev.seq, ev.type, ev.payload)
    return fold.result()
