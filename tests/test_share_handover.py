"""A mix part's `share_handed_over`, as the folds read it: the ledger (live and at a resume),
`replay` and `audit`. The end-to-end runs are in test_strategies_e2e.py (a mix spends its whole
budget) and test_crash_points.py (a kill around the hand-over)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthledger.engine.ledger.audit import audit_events
from synthledger.engine.ledger.budget import Amount, BudgetSpec, Limits
from synthledger.engine.ledger.events import (Cost, QueryDispatched, QueryReserved, QuerySettled, RunResumed,
                                              RunStarted, ShareHandedOver, to_payload)
from synthledger.engine.ledger.ledger import Ledger
from synthledger.engine.ledger.replay import replay
from synthledger.engine.ledger.shares import HandOver, hand_over
from synthledger.store.eventstore import EventStore, NewEvent
from synthledger.store.hashing import GENESIS

HALVES = {"a": 0.5, "b": 0.5}


def spec(queries: int, fractions: dict[str, float] = HALVES) -> BudgetSpec:
    total = Limits(queries=queries)
    return BudgetSpec(total=total, strategies=total.split(fractions))


def query(n: int, strategy: str) -> list[Any]:
    """One query of `strategy`, reserved, sent and settled at one query."""
    qid, one = f"{strategy}{n}", Cost(queries=1)
    return [QueryReserved(query_id=qid, key=f"k-{qid}", role="teacher", purpose="answer", strategy=strategy,
                          item=f"i-{qid}", provider="test", model="m", worst=one),
            QueryDispatched(query_id=qid, attempt=1),
            QuerySettled(query_id=qid, attempt=1, actual=one, text="t")]


def queries(strategy: str, n: int, start: int = 0) -> list[Any]:
    return [ev for i in range(start, start + n) for ev in query(i, strategy)]


def handed(strategy: str, spent: int, to: dict[str, float] | None = None) -> ShareHandedOver:
    return ShareHandedOver(strategy=strategy, spent=Cost(queries=spent), to=to or {"b": 0.5})


def started(budget: BudgetSpec) -> RunStarted:
    return RunStarted(config={}, config_hash="c", plan_hash="p", version="test", budget=budget.as_dict())


class Stored:
    def __init__(self, seq: int, type_: str, payload: dict[str, Any]) -> None:
        self.seq, self.type, self.payload = seq, type_, payload


def stored(events: list[Any]) -> list[Stored]:
    return [Stored(i, *to_payload(ev)) for i, ev in enumerate(events, 1)]


def audited(events: list[Any]) -> Any:
    """`audit` of `events` written to a real (in-memory) store, hash chain and all."""
    store = EventStore("sqlite://")
    try:
        run_id = store.create_run("handover", {}, "h")
        seq, head = store.append(run_id, [NewEvent(*to_payload(ev)) for ev in events], 0, GENESIS)
        return audit_events(run_id, store.iter_events(run_id), head=(seq, head))
    finally:
        store.close()


def test_a_part_that_ended_keeps_its_spend_and_the_other_gets_the_rest():
    events = [started(spec(10)), *queries("a", 2), handed("a", 2), *queries("b", 8)]
    report = audited(events)
    assert report.ok, report.violations
    assert report.spent["queries"] == 10
    state = replay(stored(events))
    assert {k: v.queries for k, v in state.ledger.spec.strategies.items()} == {"a": 2, "b": 8}
    assert state.ledger.spec.total == Limits(queries=10)  # what `show` says the budget is
    live = Ledger(spec(10)).apply_all(stored(events))
    assert live.state() == state.ledger.state()


def test_without_the_hand_over_the_other_part_is_held_to_its_share():
    # The hand-over is what lets b spend past its half: without it the same spend breaks b's limit.
    report = audited([started(spec(10)), *queries("a", 2), *queries("b", 8)])
    assert not report.ok
    assert "strategy:b queries" in report.violations[0].message


def test_a_resume_with_another_budget_keeps_the_hand_over():
    # A resume may raise the budget: the recorded hand-over applies to the budget then in effect.
    events = [started(spec(10)), *queries("a", 2), handed("a", 2), *queries("b", 3),
              RunResumed(pid=1, budget=spec(20).as_dict()), *queries("b", 15, start=3)]
    report = audited(events)
    assert report.ok, report.violations
    assert report.spent["queries"] == 20
    state = replay(stored(events))
    assert {k: v.queries for k, v in state.ledger.spec.strategies.items()} == {"a": 2, "b": 18}
    resumed = replay(stored(events[:-45]))  # what `generate --resume` rebuilds, then its own budget
    resumed.ledger.spec = spec(20)
    assert {k: v.queries for k, v in resumed.ledger.spec.strategies.items()} == {"a": 2, "b": 18}


def test_a_log_without_hand_overs_replays_as_before():
    budget = spec(10)
    state = replay(stored([started(budget), *queries("a", 5), *queries("b", 5)]))
    assert state.ledger.spec == budget
    assert state.ledger.state()["hand_overs"] == []


@pytest.mark.parametrize("events, problem", [
    ([*queries("a", 2), handed("a", 3)], "records spent"),
    ([*queries("a", 2), handed("a", 2), handed("a", 2)], "handed over twice"),
    ([*queries("a", 2), handed("c", 0)], "'c': not a part"),
    ([*queries("a", 2), handed("a", 2, {"a": 0.5})], "hands over to 'a'"),
    ([*query(0, "a")[:1], handed("a", 0)], "still holds reservations"),
    ([*queries("a", 2), handed("a", 2), *queries("a", 1, start=2)], "strategy:a queries"),
])
def test_audit_names_a_hand_over_the_events_do_not_bear_out(events, problem):
    report = audited([started(spec(10)), *events])
    assert not report.ok
    assert any(problem in v.message for v in report.violations), report.violations


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1000), st.lists(st.integers(1, 9), min_size=2, max_size=4), st.data())
def test_a_hand_over_moves_only_the_rest_and_keeps_the_sum(total, weights, data):
    fractions = {f"p{i}": w / sum(weights) for i, w in enumerate(weights)}
    before = BudgetSpec(total=Limits(queries=total, usd=total / 7),
                        strategies=Limits(queries=total, usd=total / 7).split(fractions))
    donor = data.draw(st.sampled_from(sorted(fractions)))
    share = before.strategies[donor]
    spent = Amount(queries=data.draw(st.integers(0, share.queries)), usd=share.usd / 3)
    to = {name: f for name, f in fractions.items() if name != donor}
    after = hand_over(before, HandOver(donor, spent, to)).strategies
    assert after[donor].queries == spent.queries and after[donor].usd == pytest.approx(spent.usd)
    assert sum(lim.queries for lim in after.values()) == total
    assert sum(lim.usd for lim in after.values()) == pytest.approx(total / 7)
    for name in to:  # a part still going never loses room it had
        assert all(getattr(after[name], d) >= getattr(before.strategies[name], d) for d in ("queries", "usd"))
        assert after[name].input_tokens is None  # a dimension without a limit stays without one
