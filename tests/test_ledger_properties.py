"""Property tests of the budget ledger.

A driver plays random query lifecycles the way the dispatcher does (reserve only when `headroom()`
allows, dispatch, fail billed or unbilled, re-reserve a billed retry, settle with actual <= worst,
abandon, a resume in the middle) against random budgets with total, per-role and per-strategy
limits and `counted_roles`. An independent model of what must have been spent and held checks the
ledger after every event, and the recorded stream must replay to the identical ledger however it is
split and whether it went through a real store or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synthledger.engine.ledger.audit import audit_events
from synthledger.engine.ledger.events import (AttemptFailed, Cost, QueryAbandoned, QueryDispatched, QueryReserved,
                                       QuerySettled, RunResumed, RunStarted, to_payload)
from synthledger.engine.ledger.ledger import DIMENSIONS, EPS, Amount, BudgetSpec, Ledger, Limits, budget_from_dict
from synthledger.store.eventstore import EventStore, NewEvent
from synthledger.store.hashing import GENESIS

ROLES = ("teacher", "augmenter", "judge")
STRATEGIES = ("aa", "qr", "nq")
DIMS = DIMENSIONS

# ---- random budgets and operations ----------------------------------------------------------------


@st.composite
def limits(draw: Any) -> Limits:
    def maybe(s: Any) -> Any:  # unlimited, a zero limit (rarely), or a limit a few queries can reach
        return draw(st.sampled_from(["none"] * 5 + ["some"] * 4 + ["zero"]).flatmap(
            lambda k: st.none() if k == "none" else st.just(0) if k == "zero" else s))

    return Limits(
        queries=maybe(st.integers(1, 12)),
        input_tokens=maybe(st.integers(100, 2500)),
        output_tokens=maybe(st.integers(100, 2000)),
        usd=maybe(st.integers(1000, 40_000).map(lambda micro: micro / 1e6)),
    )


@st.composite
def budgets(draw: Any) -> BudgetSpec:
    return BudgetSpec(
        total=draw(limits()),
        roles={r: draw(limits()) for r in draw(st.sets(st.sampled_from(ROLES)))},
        strategies={s: draw(limits()) for s in draw(st.sets(st.sampled_from(STRATEGIES)))},
        counted_roles=draw(st.one_of(st.none(), st.frozensets(st.sampled_from(ROLES)))),
    )


worst_costs = st.builds(
    lambda q, i, o, micro: {"queries": q, "input_tokens": i, "output_tokens": o, "usd": micro / 1e6},
    st.integers(1, 3), st.integers(1, 400), st.integers(1, 300), st.integers(0, 6000),
)
pick = st.integers(0, 1000)  # which of the eligible queries an operation applies to
fraction = st.floats(0, 1, allow_nan=False)

OPERATION_ARGS = {
    "reserve": st.tuples(st.just("reserve"), st.sampled_from(ROLES), st.sampled_from(STRATEGIES), worst_costs),
    "dispatch": st.tuples(st.just("dispatch"), pick),
    "fail": st.tuples(st.just("fail"), pick, st.booleans()),
    "retry": st.tuples(st.just("retry"), pick),
    "settle": st.tuples(st.just("settle"), pick, st.tuples(fraction, fraction, fraction)),
    "abandon": st.tuples(st.just("abandon"), pick),
    "resume": st.tuples(st.just("resume")),
}
# Weighted so that lifecycles get far (most reservations are sent, most sends end) and resumes stay rare.
KINDS = ["reserve"] * 4 + ["dispatch"] * 4 + ["settle"] * 2 + ["fail"] * 2 + ["retry"] * 2 + ["abandon", "resume"]
operations = st.lists(st.sampled_from(KINDS).flatmap(OPERATION_ARGS.__getitem__), min_size=10, max_size=80)


# ---- the driver and its independent model ---------------------------------------------------------


@dataclass
class Q:
    qid: str
    role: str
    strategy: str
    worst: dict[str, Any]
    state: str = "held"  # held | sent | unheld (needs a new reservation) | done
    attempt: int = 1


def exact(amount: dict[str, Any]) -> dict[str, Fraction]:
    return {d: Fraction(amount[d]) for d in DIMS}


class Model:
    """What must be spent and held per scope, computed in exact arithmetic from the spec's rules."""

    def __init__(self, spec: BudgetSpec) -> None:
        self.spec = spec
        self.spent: dict[str, dict[str, Fraction]] = {}
        self.held: dict[str, dict[str, Fraction]] = {}

    def scopes(self, role: str, strategy: str) -> list[str]:
        out = []
        counted = self.spec.counted_roles is None or role in self.spec.counted_roles
        if counted:
            out.append("total")
        if role in self.spec.roles:
            out.append(f"role:{role}")
        if strategy in self.spec.strategies and counted:  # a share of the total counts what it counts
            out.append(f"strategy:{strategy}")
        return out

    def limits(self, scope: str) -> Limits:
        if scope == "total":
            return self.spec.total
        kind, _, name = scope.partition(":")
        return (self.spec.roles if kind == "role" else self.spec.strategies)[name]

    def _add(self, table: dict, q: Q, amount: dict[str, Any], sign: int) -> None:
        for scope in self.scopes(q.role, q.strategy):
            bucket = table.setdefault(scope, {d: Fraction(0) for d in DIMS})
            for d, v in exact(amount).items():
                bucket[d] += sign * v

    def hold(self, q: Q) -> None:
        self._add(self.held, q, q.worst, +1)

    def release(self, q: Q) -> None:
        self._add(self.held, q, q.worst, -1)

    def spend(self, q: Q, amount: dict[str, Any]) -> None:
        self._add(self.spent, q, amount, +1)

    def fits(self, q: Q) -> bool | None:
        """Whether q's worst case fits under every limit; None when it sits within float noise of one."""
        worst = exact(q.worst)
        for scope in self.scopes(q.role, q.strategy):
            lim = self.limits(scope)
            for d in DIMS:
                limit = getattr(lim, d)
                if limit is None:
                    continue
                used = self.spent.get(scope, {}).get(d, 0) + self.held.get(scope, {}).get(d, 0) + worst[d]
                edge = Fraction(limit) + Fraction(EPS)
                if abs(used - edge) < Fraction(1, 10**12):
                    return None
                if used > edge:
                    return False
        return True


class Driver:
    def __init__(self, spec: BudgetSpec) -> None:
        self.spec = spec
        self.ledger = Ledger(spec)
        self.model = Model(spec)
        self.queries: list[Q] = []
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.emit(RunStarted(config={}, config_hash="c", plan_hash="p", version="test", budget=spec.as_dict()))

    def emit(self, event: Any) -> None:
        type_, payload = to_payload(event)
        seq = len(self.events) + 1
        self.events.append((seq, type_, payload))
        self.ledger.apply(seq, type_, payload)
        self.check()

    def eligible(self, state: str, i: int) -> Q | None:
        qs = [q for q in self.queries if q.state == state]
        return qs[i % len(qs)] if qs else None

    def reserve(self, q: Q, *, retry: bool) -> bool:
        why = self.ledger.headroom(q.role, q.strategy, Amount.of(q.worst))
        fits = self.model.fits(q)
        if fits is not None:
            assert (why is None) == fits, f"headroom said {why!r}, the model says fits={fits}"
        if why is not None:
            return False
        self.model.hold(q)
        self.emit(QueryReserved(query_id=q.qid, attempt=q.attempt, key=f"k-{q.qid}", role=q.role, purpose="p",
                                strategy=q.strategy, item=f"item-{q.qid}", provider="test", model=f"m-{q.role}",
                                worst=Cost(**q.worst), messages=None if retry else [{"role": "user", "content": "?"}]))
        return True

    def step(self, op: tuple) -> None:
        kind = op[0]
        if kind == "reserve":
            _, role, strategy, worst = op
            q = Q(f"q{len(self.queries)}", role, strategy, worst)
            if self.reserve(q, retry=False):
                self.queries.append(q)
        elif kind == "dispatch" and (q := self.eligible("held", op[1])):
            q.state = "sent"
            self.emit(QueryDispatched(query_id=q.qid, attempt=q.attempt))
        elif kind == "fail" and (q := self.eligible("sent", op[1])):
            billed = op[2]
            if billed:  # it may have reached the model: the worst case is spent, a retry reserves anew
                self.model.release(q)
                self.model.spend(q, q.worst)
            q.state = "unheld" if billed else "held"
            self.emit(AttemptFailed(query_id=q.qid, attempt=q.attempt, kind="timeout" if billed else "rate_limited",
                                    maybe_billed=billed))
            q.attempt += 1
        elif kind == "retry" and (q := self.eligible("unheld", op[1])):
            if self.reserve(q, retry=True):
                q.state = "held"
            else:  # the dispatcher gives the query up when a retry no longer fits
                q.state = "done"
                self.emit(QueryAbandoned(query_id=q.qid, reason="budget cannot cover a retry"))
        elif kind == "settle" and (q := self.eligible("sent", op[1])):
            fi, fo, fu = op[2]
            w = q.worst
            actual = {"queries": w["queries"], "input_tokens": int(w["input_tokens"] * fi),
                      "output_tokens": int(w["output_tokens"] * fo), "usd": w["usd"] * fu}
            assert all(actual[d] <= w[d] for d in DIMS)
            self.model.release(q)
            self.model.spend(q, actual)
            q.state = "done"
            self.emit(QuerySettled(query_id=q.qid, attempt=q.attempt, actual=Cost(**actual), text="t"))
        elif kind == "abandon":
            qs = [q for q in self.queries if q.state in ("held", "unheld")]
            if qs:
                q = qs[op[1] % len(qs)]
                if q.state == "held":
                    self.model.release(q)
                q.state = "done"
                self.emit(QueryAbandoned(query_id=q.qid, reason="gave up"))
        elif kind == "resume":
            for q in self.queries:
                if q.state == "sent":  # in flight when the process died: may have been billed
                    self.model.release(q)
                    self.model.spend(q, q.worst)
                elif q.state == "held":  # reserved but never sent: nothing was spent
                    self.model.release(q)
                if q.state in ("sent", "held"):
                    q.state = "unheld"
                    q.attempt += 1
            self.emit(RunResumed(pid=1, budget=self.spec.as_dict()))

    def check(self) -> None:
        led = self.ledger
        assert led.violations == [], led.violations
        assert led.in_flight == sum(q.state == "sent" for q in self.queries)
        scopes = ["total", *(f"role:{r}" for r in self.spec.roles), *(f"strategy:{s}" for s in self.spec.strategies)]
        for scope in scopes:
            lim = self.model.limits(scope)
            spent, held = led.spent.get(scope) or Amount(), led.reserved.get(scope) or Amount()
            for d in DIMS:
                want_spent = self.model.spent.get(scope, {}).get(d, 0)
                want_held = self.model.held.get(scope, {}).get(d, 0)
                assert abs(Fraction(getattr(spent, d)) - want_spent) < 1e-9, (scope, d, "spent")
                assert abs(Fraction(getattr(held, d)) - want_held) < 1e-9, (scope, d, "reserved")
                assert getattr(held, d) >= -EPS
                limit = getattr(lim, d)
                if limit is not None:  # THE invariant: never more settled + reserved than allowed
                    assert getattr(spent, d) + getattr(held, d) <= limit + EPS, (scope, d)


def play(spec: BudgetSpec, ops: list[tuple]) -> Driver:
    driver = Driver(spec)
    for op in ops:
        driver.step(op)
    return driver


class Stored:
    """The shape of a StoredEvent, for folding an in-memory list."""

    def __init__(self, seq: int, type_: str, payload: dict[str, Any]) -> None:
        self.seq, self.type, self.payload = seq, type_, payload


# ---- properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(budgets(), operations)
def test_never_over_any_limit_and_exact_accounting(spec, ops):
    driver = play(spec, ops)
    # every counted query is attributed exactly once
    total_q = sum(a.queries for a in driver.ledger.by_role.values())
    assert total_q == sum(a.queries for a in driver.ledger.by_strategy.values())
    assert total_q == sum(a.queries for a in driver.ledger.by_model.values())


@settings(max_examples=200, deadline=None)
@given(budgets(), operations, st.integers(0, 10_000))
def test_prefix_then_rest_equals_one_replay(spec, ops, cut):
    driver = play(spec, ops)
    events = [Stored(*e) for e in driver.events]
    k = cut % (len(events) + 1)
    once = Ledger(spec).apply_all(events)
    resumed = Ledger(spec).apply_all(events[:k])
    resumed.apply_all(events[k:])
    assert once.state() == resumed.state() == driver.ledger.state()
    # the spec itself can be recovered from the recorded run_started: what `audit` relies on
    assert budget_from_dict(events[0].payload["budget"]) == spec


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budgets(), operations, st.integers(1, 7))
def test_store_round_trip_gives_the_same_ledger(spec, ops, batch):
    driver = play(spec, ops)
    store = EventStore("sqlite://")
    try:
        run_id = store.create_run("prop", {}, "h")
        seq, head = 0, GENESIS
        for i in range(0, len(driver.events), batch):  # group commits of random size
            seq, head = store.append(run_id, [NewEvent(t, p) for _, t, p in driver.events[i:i + batch]], seq, head)
        read_back = Ledger(spec).apply_all(store.iter_events(run_id, page=5))
        assert read_back.state() == driver.ledger.state()
        report = audit_events(run_id, store.iter_events(run_id), head=(seq, head))
        assert report.ok, report.violations
        assert report.spent == driver.ledger.snapshot()["spent"]
    finally:
        store.close()
