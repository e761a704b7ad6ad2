"""`audit`: replay a run from its events and check everything that must hold.

- the hash chain and the sequence numbers are intact (nothing edited, inserted or removed);
- every payload is a valid event of a known type;
- settled + reserved never exceeded a limit (the ledger's own check, event by event);
- no settled query was dispatched or settled again;
- every dispatched attempt ended (settled, failed, abandoned) or was closed by a resume;
- the spend recomputed from the events matches what was reported at the end;
- the shares of a request that carried several queries (k samples, one `n=k` call) add up to
  that request's usage exactly (engine/audit_sharing.py, which also summarises batches and pacing);
- every answer reused from another run matches the settled event it names (audit_reuse.py), and
  what was paid is reported apart from what was reused;
- a mix part's `share_handed_over` names a part of the mix, once, with the spend the events
  counted and nothing of it still reserved; from there on its limit is that spend (the ledger's).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from pydantic import ValidationError

from ...store.eventstore import EventStore
from ...store.hashing import GENESIS, chain_hash
from ...store.records import FINISHED
from .audit_reuse import ReuseAudit, ReuseCheck, reuse_problem
from .audit_sharing import SharingAudit, summary_lines
from .events import (EVENT_TYPES, AttemptFailed, ProviderFault, QueryAbandoned, QueryDispatched,
                     QuerySettled, RunFinished, RunResumed, RunStarted, parse_event)
from .ledger import BudgetSpec, Ledger, Violation, budget_from_dict


@dataclass
class AuditReport:
    run_id: str
    ok: bool
    events: int
    spent: dict[str, Any]
    budget: dict[str, Any]
    by_role: dict[str, Any]
    by_strategy: dict[str, Any]
    by_model: dict[str, Any]
    counts: dict[str, Any]
    violations: list[Violation] = field(default_factory=list)
    status: str | None = None
    sharing: dict[str, Any] = field(default_factory=dict)
    # What providers reported that no correct provider can (seq, message): not the engine's doing,
    # but what explains spend above a limit.
    provider_faults: list[Violation] = field(default_factory=list)
    paid: dict[str, Any] = field(default_factory=dict)
    reused: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "ok": self.ok, "events": self.events, "status": self.status,
            "spent": self.spent, "paid": self.paid, "reused": self.reused, "budget": self.budget, "by_role": self.by_role,
            "by_strategy": self.by_strategy, "by_model": self.by_model, "counts": self.counts,
            "violations": [{"seq": v.seq, "message": v.message} for v in self.violations],
            **self.sharing,
            "provider_faults": [{"seq": v.seq, "message": v.message} for v in self.provider_faults],
        }

    def sharing_lines(self) -> list[str]:
        return summary_lines(self.sharing)


class _AuditFold:
    """The checks that need the run's meaning, not just its bytes: the ledger's own (limits never
    exceeded, nothing settled twice), the shares of multi-query requests, reused answers, and that
    every attempt sent before a clean finish ended."""

    def __init__(self, check_reuse: ReuseCheck | None) -> None:
        self.ledger = Ledger(BudgetSpec())
        self.sharing = SharingAudit()
        self.reuses = ReuseAudit(check_reuse)
        self.violations: list[Violation] = []
        self.faults: list[Violation] = []
        self.open_attempts: dict[str, int] = {}  # query id -> seq of its open dispatch
        self.status: str | None = None

    def apply(self, seq: int, type_: str, payload: dict[str, Any]) -> None:
        handler = _HANDLERS.get(type_)
        if handler is not None:
            handler(self, seq, payload)
        self.ledger.apply(seq, type_, payload)
        self.sharing.feed(seq, type_, payload)
        self.reuses.feed(seq, type_, payload)

    def _session(self, seq: int, p: dict[str, Any]) -> None:
        if p.get("budget"):
            self.ledger.spec = budget_from_dict(p["budget"])

    def _resumed(self, seq: int, p: dict[str, Any]) -> None:
        self._session(seq, p)
        self.open_attempts.clear()

    def _fault(self, seq: int, p: dict[str, Any]) -> None:
        self.faults.append(Violation(seq, f"query {p['query_id']}: {p['message']}"))

    def _dispatched(self, seq: int, p: dict[str, Any]) -> None:
        self.open_attempts[p["query_id"]] = seq

    def _attempt_ended(self, seq: int, p: dict[str, Any]) -> None:
        self.open_attempts.pop(p["query_id"], None)

    def _finished(self, seq: int, p: dict[str, Any]) -> None:
        self.status = p["status"]
        if self.status in FINISHED and self.open_attempts:
            # Reported where it became certain (the finish), so the first bad seq stays meaningful.
            qid, sent = next(iter(self.open_attempts.items()))
            self.violations.append(Violation(seq, f"query {qid} dispatched at seq {sent} but never settled, "
                                                  f"failed or abandoned before the run finished "
                                                  f"({len(self.open_attempts)} open)"))


_HANDLERS: dict[str, Callable[[_AuditFold, int, dict[str, Any]], None]] = {
    RunStarted.TYPE: _AuditFold._session,
    RunResumed.TYPE: _AuditFold._resumed,
    ProviderFault.TYPE: _AuditFold._fault,
    QueryDispatched.TYPE: _AuditFold._dispatched,
    QuerySettled.TYPE: _AuditFold._attempt_ended,
    AttemptFailed.TYPE: _AuditFold._attempt_ended,
    QueryAbandoned.TYPE: _AuditFold._attempt_ended,
    RunFinished.TYPE: _AuditFold._finished,
}


def _link_violations(ev: Any, expected_seq: int, prev_hash: str) -> list[Violation]:
    """What is wrong with `ev` as the next link of the chain (numbering and hash)."""
    out: list[Violation] = []
    if ev.seq > expected_seq:  # name the first missing number: that is where the log was cut
        missing = f"{expected_seq}" if ev.seq == expected_seq + 1 else f"{expected_seq}..{ev.seq - 1}"
        out.append(Violation(expected_seq, f"sequence gap: event(s) {missing} missing "
                                           f"(next stored event is {ev.seq})"))
    elif ev.seq < expected_seq:
        out.append(Violation(ev.seq, f"sequence out of order: expected {expected_seq}, found {ev.seq}"))
    raw = ev.raw.encode() if isinstance(ev.raw, str) else ev.raw
    if chain_hash(prev_hash, ev.seq, ev.type, ev.schema_version, ev.ts, raw) != ev.hash:
        out.append(Violation(ev.seq, "hash chain broken: event was altered or the chain re-linked"))
    return out


def checked_chain(events: Iterable[Any], head: tuple[int, str], damaged: Callable[[Violation], Exception]
                  ) -> Iterator[Any]:
    """`events` as they come, each checked as the next link of the chain and the end against the
    run's recorded head; the first break raises `damaged(violation)`. A resume folds its run through
    this: extended past an event someone removed or edited, the run went on as if nothing was wrong
    (only a later `audit` said so), its budget and dataset folds short of what was settled."""
    expected, prev = 1, GENESIS
    for ev in events:
        for v in _link_violations(ev, expected, prev):
            raise damaged(v)
        expected, prev = ev.seq + 1, ev.hash
        yield ev
    if expected - 1 < head[0]:  # cut short (a log longer than its head may be a live writer's: its lease says)
        for v in _head_violations(expected - 1, prev, head):
            raise damaged(v)


def _head_violations(last_in_log: int, log_head: str, head: tuple[int, str]) -> list[Violation]:
    """The log's end against the head the run row recorded at its last commit."""
    last_seq, head_hash = head
    if last_in_log < last_seq:
        return [Violation(last_in_log + 1, f"events {last_in_log + 1}..{last_seq} missing: the run "
                                           f"recorded {last_seq} events, the log ends at {last_in_log}")]
    if last_in_log > last_seq:
        return [Violation(last_seq + 1, f"events after {last_seq}, the last one the run recorded "
                                        "at its last commit, were added outside the store")]
    if last_seq > 0 and log_head != head_hash:
        return [Violation(last_seq, "head hash differs from the one recorded at the last commit")]
    return []


def audit_events(run_id: str, events: Any, *, validate: bool = True,
                 head: tuple[int, str] | None = None, check_reuse: ReuseCheck | None = None) -> AuditReport:
    """`head` is (last_seq, head_hash) as the store's run row recorded them at the last commit: it
    catches events cut from the end of the log, which the chain alone cannot see. `check_reuse`
    says what is wrong with a `query_reused` payload (None: it matches its source)."""
    fold = _AuditFold(check_reuse)
    violations = fold.violations
    prev_hash, expected_seq, n = GENESIS, 1, 0
    for ev in events:  # type: StoredEvent
        n += 1
        violations.extend(_link_violations(ev, expected_seq, prev_hash))
        expected_seq, prev_hash = ev.seq + 1, ev.hash
        if ev.type not in EVENT_TYPES:
            violations.append(Violation(ev.seq, f"unknown event type {ev.type!r}"))
            continue
        try:
            payload = ev.payload
            if validate:
                parse_event(ev.type, payload)
        except (ValidationError, ValueError) as exc:
            violations.append(Violation(ev.seq, f"invalid {ev.type} payload: {str(exc).splitlines()[0]}"))
            continue
        fold.apply(ev.seq, ev.type, payload)
    if head is not None:
        violations.extend(_head_violations(expected_seq - 1, prev_hash, head))
    violations.extend(fold.ledger.violations)
    violations.extend(fold.sharing.violations)
    violations.extend(fold.reuses.violations)
    violations.sort(key=lambda v: v.seq)
    snap = fold.ledger.snapshot()
    return AuditReport(run_id=run_id, ok=not violations, events=n, spent=snap["spent"], budget=snap["budget"],
                       by_role=snap["by_role"], by_strategy=snap["by_strategy"], by_model=snap["by_model"],
                       counts=snap["counts"], violations=violations, status=fold.status,
                       sharing=fold.sharing.summary(), provider_faults=fold.faults, paid=snap["paid"],
                       reused=snap["reused"])


def audit_run(store: EventStore, run_id: str) -> AuditReport:
    """Audit the run as of now. A run still being written is read up to the head it had when the
    audit began, so a live append is never mistaken for tampering; rows beyond the recorded head
    that no append wrote are still caught."""
    info = store.get_run(run_id)
    upto = info.last_seq
    events = itertools.takewhile(lambda ev: ev.seq <= upto, store.iter_events(run_id))
    report = audit_events(run_id, events, head=(info.last_seq, info.head_hash),
                          check_reuse=lambda p: reuse_problem(store, run_id, p))
    if report.status is None:  # no run_finished yet: the run is going, or its process is gone
        report.status = info.status
    recorded, stored = store.log_end(run_id)
    if stored > recorded:
        report.violations.append(Violation(recorded + 1, f"events {recorded + 1}..{stored} were added outside "
                                                         f"the store (the run recorded {recorded})"))
        report.violations.sort(key=lambda v: v.seq)
        report.ok = False
    return report
