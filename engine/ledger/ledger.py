"""The budget ledger: a pure fold over a run's events.

Nothing here talks to a model or a database. The dispatcher asks `can_reserve` before it writes a
reservation; the same `apply` that updates its in-memory ledger is what `audit` and `--resume`
replay, so the numbers a user sees after a crash are the numbers the live run enforced.

Accounting rules (the research's unit is a settled teacher query, but every role is tracked):
- a reservation holds the worst case of one attempt (1 query, prompt-token bound, max_tokens, $);
- settling replaces it with the actual usage;
- a failed attempt that provably never reached the model keeps the reservation for the retry;
- a failed attempt that may have been billed (timeout after send, dropped mid-response, a garbled
  200) turns its worst case into spent, and a retry must reserve afresh;
- at a resume, attempts that were in flight when the process died are treated the same way -
  except those inside a provider batch: the batch outlives the process, and the resumed run polls
  it, so they stay reserved and in flight until their results settle them;
- a query reused from another run of the store (`query_reused`) counts toward every limit with the
  source's actual usage, like a settled one, but is kept apart as `reused`: it was not paid;
- a mix part's `share_handed_over` moves what it left of its share to the parts still going
  (shares.py): `spec` is always the budget in effect with every recorded hand-over applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from .batch_fold import BatchFold
from .budget import (DIMENSIONS, EPS, Amount, BudgetSpec, Limits, budget_from_dict,  # noqa: F401 (re-exported)
                     strategy_scope)
from .events import (AttemptFailed, BatchFinished, BatchPrepared, BatchStatus, BatchSubmitted, ProviderFault,
                     QueryAbandoned, QueryDispatched, QueryReserved, QueryReused, QuerySettled, RateAdjusted,
                     RunResumed, ShareHandedOver)
from .idset import IntSet
from .report import LedgerReport
from .shares import HandOver, with_hand_overs


@dataclass
class QueryState:
    role: str
    strategy: str
    model: str
    key: str
    worst: Amount = field(default_factory=Amount)
    holding: bool = False  # a reservation is active
    dispatched_attempt: int = 0  # attempt in flight (0 = none)
    attempts: int = 0
    status: str = "reserved"  # reserved | settled | abandoned | interrupted


@dataclass
class Violation:
    seq: int
    message: str


_NOTHING = Amount()  # read-only stand-in for a scope with nothing spent or reserved yet


class Ledger(BatchFold, LedgerReport):
    def __init__(self, spec: BudgetSpec) -> None:
        self.hand_overs: list[HandOver] = []  # a mix's recorded hand-overs, in order
        self.spec = spec
        # Open queries only: settled and abandoned ones leave, so a long run's memory stays flat.
        self.queries: dict[str, QueryState] = {}
        self.settled = IntSet()  # hash(query_id) of every settled query (see idset: a set cost 75 B each)
        # Attempts made by queries a dead process left open: a resumed query continues its count
        # (and its attempt cap) rather than starting again at 1. Bounded by what was in flight.
        self.interrupted: dict[str, int] = {}
        self.spent: dict[str, Amount] = {}
        self.reserved: dict[str, Amount] = {}
        self.by_role: dict[str, Amount] = {}
        self.by_strategy: dict[str, Amount] = {}
        self.by_model: dict[str, Amount] = {}
        self.reused = Amount()  # spend (every role) that was served from the store, not paid
        self.violations: list[Violation] = []
        self.counts = {"settled": 0, "failed_attempts": 0, "rate_limited": 0, "retries": 0, "abandoned": 0,
                       "lost": 0, "dispatched": 0, "provider_faults": 0, "reused": 0}
        self.faulted: set[str] = set()  # request keys of queries a provider misreported (bounded by faults)
        self.in_flight = 0
        self.last_seq = 0
        # Queries inside a provider batch (query id -> batch key), and each open batch's state.
        self.batched: dict[str, str] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_ids: set[str] = set()  # every batch the provider created for this run, ended ones too
        self.pacing: dict[str, dict[str, Any]] = {}  # model -> its last recorded pacing change

    @property
    def spec(self) -> BudgetSpec:
        """The limits in effect: the session's budget with every recorded hand-over applied."""
        return self._spec

    @spec.setter
    def spec(self, budget: BudgetSpec) -> None:
        """A session sets its budget (run_started, run_resumed: a resume may change it); the
        hand-overs already recorded still apply to it, so a resumed run keeps the same shares."""
        self._spec = with_hand_overs(budget, self.hand_overs)

    def handed_over(self) -> set[str]:
        """The mix parts whose share was handed over (their spend is final)."""
        return {h.strategy for h in self.hand_overs}

    # ---- queries used by the dispatcher ----------------------------------------------
    def _bucket(self, table: dict[str, Amount], key: str) -> Amount:
        amt = table.get(key)
        if amt is None:
            amt = table[key] = Amount()
        return amt

    def overruns(self, scope: str, limits: Limits, extra: Amount | None = None,
                 dims: tuple[str, ...] = DIMENSIONS) -> Iterator[tuple[str, Any, Any]]:
        """(dimension, used, limit) for each limit of `scope` that spent + reserved (+ `extra`) exceeds.

        The one place "spent + reserved against the limit" is written: the dispatch check, the
        admission of plan items (run/admission.py) and the fold's own violation check use it."""
        spent = self.spent.get(scope) or _NOTHING
        held = self.reserved.get(scope) or _NOTHING
        for dim, limit in limits.bound:
            if dims is not DIMENSIONS and dim not in dims:
                continue
            used = getattr(spent, dim) + getattr(held, dim)
            if extra is not None:
                used += getattr(extra, dim)
            if used > limit + EPS:
                yield dim, used, limit

    def headroom(self, role: str, strategy: str, worst: Amount) -> str | None:
        """None if `worst` fits under every limit that applies, else which limit it would break."""
        for scope, limits in self.spec.scopes(role, strategy):
            for dim, _, limit in self.overruns(scope, limits, worst):
                return f"{scope} {dim} limit {limit}"
        return None

    def limits_for(self, scope: str) -> Limits | None:
        if scope == "total":
            return self.spec.total
        kind, _, name = scope.partition(":")
        table = self.spec.roles if kind == "role" else self.spec.strategies if kind == "strategy" else {}
        return table.get(name)

    def remaining(self, scope: str = "total") -> dict[str, Any]:
        """What is left under each limit of `scope` after spent and reserved (None: no limit)."""
        limits = self.limits_for(scope) or Limits()
        spent = self.spent.get(scope) or Amount()
        held = self.reserved.get(scope) or Amount()
        return {d: (None if getattr(limits, d) is None else getattr(limits, d) - getattr(spent, d) - getattr(held, d))
                for d in DIMENSIONS}

    # ---- the fold ----------------------------------------------------------------------
    def apply_all(self, events: Iterable[Any]) -> "Ledger":
        for ev in events:
            self.apply_event(ev)
        return self

    def apply_event(self, ev: Any) -> None:
        """Fold one stored event; its payload is decoded only when the ledger cares about its type."""
        self.last_seq = ev.seq
        handler = _HANDLERS.get(ev.type)
        if handler is not None:
            handler(self, ev.seq, ev.payload)

    def apply(self, seq: int, type_: str, p: dict[str, Any]) -> None:
        self.last_seq = seq
        handler = _HANDLERS.get(type_)
        if handler is not None:
            handler(self, seq, p)

    def _move(self, seq: int, q: QueryState, amount: Amount, *, release: Amount | None, spend: bool) -> None:
        for scope, _ in self.spec.scopes(q.role, q.strategy):
            if release is not None:
                self._bucket(self.reserved, scope).add(release, -1)
            if spend:
                self._bucket(self.spent, scope).add(amount)
        if spend:
            self._bucket(self.by_role, q.role).add(amount)
            self._bucket(self.by_strategy, q.strategy).add(amount)
            self._bucket(self.by_model, q.model).add(amount)
            self._check(seq, q)

    def _violate(self, seq: int, message: str) -> None:
        self.violations.append(Violation(seq, message))

    def _check(self, seq: int, q: QueryState) -> None:
        for scope, limits in self.spec.scopes(q.role, q.strategy):
            for dim, used, limit in self.overruns(scope, limits):
                why = (" (the provider reported usage above the request's cap: see its provider_fault)"
                       if q.key in self.faulted else "")
                self.violations.append(Violation(seq, f"{scope} {dim}: spent+reserved {used} > limit {limit}{why}"))

    def _on_reserved(self, seq: int, p: dict[str, Any]) -> None:
        qid = p["query_id"]
        q = self.queries.get(qid)
        worst = Amount.of(p.get("worst"))
        if hash(qid) in self.settled:
            self.violations.append(Violation(seq, f"query {qid} reserved after it settled"))
        if q is None:
            q = self.queries[qid] = QueryState(p.get("role", "teacher"), p.get("strategy", ""),
                                               p.get("model", ""), p.get("key", ""))
            q.attempts = self.interrupted.pop(qid, 0)
        elif q.holding:
            self.violations.append(Violation(seq, f"query {qid} reserved twice"))
            return
        q.worst = worst
        q.holding = True
        q.status = "reserved"
        for scope, _ in self.spec.scopes(q.role, q.strategy):
            self._bucket(self.reserved, scope).add(worst)
        self._check(seq, q)

    def _on_dispatched(self, seq: int, p: dict[str, Any]) -> None:
        q = self.queries.get(p["query_id"])
        if hash(p["query_id"]) in self.settled:
            self.violations.append(Violation(seq, f"settled query {p['query_id']} dispatched again"))
        if q is None or not q.holding:
            self.violations.append(Violation(seq, f"query {p['query_id']} dispatched without a reservation"))
            return
        if q.dispatched_attempt:
            self.violations.append(Violation(seq, f"query {p['query_id']} dispatched while an attempt is open"))
        q.dispatched_attempt = int(p.get("attempt", 1))
        q.attempts += 1
        if q.attempts > 1:
            self.counts["retries"] += 1
        self.counts["dispatched"] += 1
        self.in_flight += 1

    def _close_attempt(self, q: QueryState) -> None:
        if q.dispatched_attempt:
            q.dispatched_attempt = 0
            self.in_flight -= 1

    def _on_failed(self, seq: int, p: dict[str, Any]) -> None:
        q = self.queries.get(p["query_id"])
        if q is None:
            self.violations.append(Violation(seq, f"failure of unknown query {p['query_id']}"))
            return
        self._close_attempt(q)
        self.batched.pop(p["query_id"], None)
        self.counts["failed_attempts"] += 1
        if p.get("kind") == "rate_limited":
            self.counts["rate_limited"] += 1
        if p.get("maybe_billed") and q.holding:
            q.holding = False
            self.counts["lost"] += 1
            self._move(seq, q, q.worst, release=q.worst, spend=True)

    def _on_settled(self, seq: int, p: dict[str, Any]) -> None:
        qid = p["query_id"]
        if hash(qid) in self.settled:
            self.violations.append(Violation(seq, f"query {qid} settled twice"))
            return
        q = self.queries.pop(qid, None)
        self.batched.pop(qid, None)
        if q is None or not q.holding:
            self.violations.append(Violation(seq, f"query {qid} settled without a reservation"))
            if q is None:
                return
        self._close_attempt(q)
        release = q.worst if q.holding else None
        q.holding = False
        q.status = "settled"
        self.counts["settled"] += 1
        self.settled.add(hash(qid))
        self._move(seq, q, Amount.of(p.get("actual")), release=release, spend=True)

    def _on_fault(self, seq: int, p: dict[str, Any]) -> None:
        self.counts["provider_faults"] += 1
        q = self.queries.get(p["query_id"])
        if q is not None:
            self.faulted.add(q.key)

    def _on_reused(self, seq: int, p: dict[str, Any]) -> None:
        qid = p["query_id"]
        if hash(qid) in self.settled:
            self.violations.append(Violation(seq, f"query {qid} reused after it settled"))
            return
        open_q = self.queries.get(qid)
        if open_q is not None and open_q.holding:
            self.violations.append(Violation(seq, f"query {qid} reused while a reservation for it is held"))
            return
        self.queries.pop(qid, None)
        self.interrupted.pop(qid, None)
        q = QueryState(p.get("role", "teacher"), p.get("strategy", ""), p.get("model", ""), p.get("key", ""),
                       status="reused")
        amount = Amount.of(p.get("actual"))
        self.settled.add(hash(qid))
        self.counts["reused"] += 1
        self.reused.add(amount)
        self._move(seq, q, amount, release=None, spend=True)

    def _on_abandoned(self, seq: int, p: dict[str, Any]) -> None:
        self.batched.pop(p["query_id"], None)
        q = self.queries.pop(p["query_id"], None)
        if q is None:
            return
        self._close_attempt(q)
        if q.holding:
            q.holding = False
            self._move(seq, q, q.worst, release=q.worst, spend=False)
        q.status = "abandoned"
        self.counts["abandoned"] += 1

    def _on_resumed(self, seq: int, _p: dict[str, Any]) -> None:
        """Whatever was in flight when the last process died may have been billed: keep it spent."""
        for qid, q in list(self.queries.items()):
            if not q.holding or qid in self.batched:  # a batch is polled again, not lost
                continue
            q.holding = False
            q.status = "interrupted"
            self.interrupted[qid] = q.attempts
            if q.dispatched_attempt:
                self._close_attempt(q)
                self.counts["lost"] += 1
                self._move(seq, q, q.worst, release=q.worst, spend=True)
            else:  # reserved but never sent (the dispatch event is written before sending)
                self._move(seq, q, q.worst, release=q.worst, spend=False)
        self.queries = {k: q for k, q in self.queries.items() if q.status != "interrupted"}

    def _on_handed_over(self, seq: int, p: dict[str, Any]) -> None:
        """A part's share handed over: checked against the fold (a part of the mix, once, its
        recorded spend the one counted, nothing of it still reserved), then applied to `spec`."""
        h = HandOver.of(p)
        for problem in self._hand_over_problems(h):
            self._violate(seq, f"share_handed_over of {h.strategy!r}: {problem}")
        self.hand_overs.append(h)
        self._spec = with_hand_overs(self._spec, [h])

    def _hand_over_problems(self, h: HandOver) -> Iterator[str]:
        parts = self.spec.strategies
        if h.strategy not in parts:
            yield "not a part with a share of the budget"
        if h.strategy in self.handed_over():
            yield "handed over twice"
        for name in h.to:
            if name not in parts or name in self.handed_over() or name == h.strategy:
                yield f"hands over to {name!r}, not a part still going"
        scope = strategy_scope(h.strategy)
        counted = self.spent.get(scope) or _NOTHING
        if any(abs(getattr(counted, d) - getattr(h.spent, d)) > EPS for d in DIMENSIONS):
            yield f"records spent {h.spent.as_dict()}, the events counted {counted.as_dict()}"
        held = self.reserved.get(scope) or _NOTHING
        if any(getattr(held, d) > EPS for d in DIMENSIONS):
            yield f"still holds reservations {held.as_dict()}: its spend is not final"

    def is_settled(self, query_id: str) -> bool:
        return hash(query_id) in self.settled


_HANDLERS = {
    QueryReserved.TYPE: Ledger._on_reserved,
    QueryDispatched.TYPE: Ledger._on_dispatched,
    AttemptFailed.TYPE: Ledger._on_failed,
    QuerySettled.TYPE: Ledger._on_settled,
    QueryAbandoned.TYPE: Ledger._on_abandoned,
    ProviderFault.TYPE: Ledger._on_fault,
    QueryReused.TYPE: Ledger._on_reused,
    RunResumed.TYPE: Ledger._on_resumed,
    BatchPrepared.TYPE: Ledger._on_batch_prepared,
    BatchSubmitted.TYPE: Ledger._on_batch_submitted,
    BatchStatus.TYPE: Ledger._on_batch_status,
    BatchFinished.TYPE: Ledger._on_batch_finished,
    RateAdjusted.TYPE: Ledger._on_rate_adjusted,
    ShareHandedOver.TYPE: Ledger._on_handed_over,
}
