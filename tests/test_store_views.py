"""The SQL views (`samples`, `queries`, `charges`, `spend_by_run`) on SQLite and PostgreSQL: they say
what the engine's own folds say (the ledger, `export`'s rows) on a run with every kind of charge,
they render times as ISO-8601 like `events` does, and both databases answer the same rows."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from sqlalchemy import text

from synthledger.engine.output.dataset import accepted_rows
from synthledger.engine.ledger.events import (AttemptFailed, Cost, ItemDone, QueryAbandoned, QueryDispatched,
                                       QueryReserved, QuerySettled, RunFinished, RunResumed, RunStarted,
                                       SampleAccepted, SampleProposed, SampleRejected, to_payload)
from synthledger.engine.ledger.ledger import BudgetSpec, Limits
from synthledger.engine.ledger.replay import replay
from synthledger.store.copy import copy_runs
from synthledger.store.eventstore import EventStore, NewEvent, iso_ms
from synthledger.store.views import USD_DECIMALS

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
WORST = Cost(queries=1, input_tokens=100, output_tokens=50, usd=0.00123)


def reserve(qid: str, attempt: int = 1) -> QueryReserved:
    return QueryReserved(query_id=qid, attempt=attempt, key=f"k-{qid}", role="teacher", purpose="answer",
                         strategy="aa", item=f"it-{qid}", provider="openai-compatible", model="m", worst=WORST)


def settle(qid: str, attempt: int, out: int) -> QuerySettled:
    return QuerySettled(query_id=qid, attempt=attempt, text=f"answer of {qid}", finish_reason="stop", latency_s=0.25,
                        actual=Cost(queries=1, input_tokens=40, output_tokens=out, usd=0.1 + 0.2 * out / 1e6))


def propose(sid: str, question: str) -> SampleProposed:
    return SampleProposed(sample_id=sid, item=sid[2:], strategy="aa", seed_id="seed-1", question=question,
                          answer="#### 4", reference="4", query_ids=["q0"], models={"teacher": "m"})


SESSION_1 = [
    RunStarted(config={"run": {"name": "views"}}, config_hash="c", plan_hash="p", version="test",
               budget=BudgetSpec(Limits(queries=20)).as_dict()),
    reserve("q0"), QueryDispatched(query_id="q0", attempt=1), settle("q0", 1, 20),
    propose("s-a", "What is 2+2?"), SampleAccepted(sample_id="s-a", reason="final answer matches"),
    ItemDone(item="a", strategy="aa", outcome="accepted"),
    # q1: an attempt that may have been billed, then a retry that settles
    reserve("q1"), QueryDispatched(query_id="q1", attempt=1),
    AttemptFailed(query_id="q1", attempt=1, kind="connection", maybe_billed=True),
    reserve("q1", 2), QueryDispatched(query_id="q1", attempt=2), settle("q1", 2, 33),
    # q2: a failure that was not billed, then given up: costs nothing
    reserve("q2"), QueryDispatched(query_id="q2", attempt=1),
    AttemptFailed(query_id="q2", attempt=1, kind="server_error", maybe_billed=False),
    QueryAbandoned(query_id="q2", reason="server_error after 1 attempt(s)"),
    propose("s-b", "What is 3+3?"), SampleRejected(sample_id="s-b", item="b", strategy="aa", reason="wrong"),
    # at the kill: q3 in flight (spent at the resume), q4 reserved but never sent (released)
    reserve("q3"), QueryDispatched(query_id="q3", attempt=1), reserve("q4"),
]
SESSION_2 = [
    RunResumed(pid=1, unsettled=["q3", "q4"]),
    reserve("q3", 2), QueryDispatched(query_id="q3", attempt=2), settle("q3", 2, 7),
    propose("s-b", "What is 3+3, again?"), SampleAccepted(sample_id="s-b", reason="final answer matches"),
    propose("s-c", "What is 5+5?"), SampleAccepted(sample_id="s-c", reason="final answer matches"),
    RunFinished(status="completed"),
]


@pytest.fixture
def run(store_url):
    st = EventStore(store_url)
    run_id, seq, head = st.start_run("views", {"run": {"name": "views"}}, "c",
                                     [NewEvent(*to_payload(e)) for e in SESSION_1[:4]])
    for batch in (SESSION_1[4:12], SESSION_1[12:], SESSION_2):
        seq, head = st.append(run_id, [NewEvent(*to_payload(e)) for e in batch], seq, head)
    st.create_run("idle", {}, "h")  # a run with no events: a row of zeros in spend_by_run
    yield st, run_id
    st.close()


def rows(st: EventStore, sql: str, **params) -> list[dict]:
    with st.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def plain(value):
    return float(value) if isinstance(value, Decimal) else value


def test_spend_by_run_is_the_ledgers_fold(run):
    st, run_id = run
    ledger = replay(st.iter_events(run_id)).ledger
    spent = ledger.by_role["teacher"]
    [row] = rows(st, "SELECT * FROM spend_by_run WHERE run_id = :r", r=run_id)
    assert (row["queries"], row["input_tokens"], row["output_tokens"]) == (
        spent.queries, spent.input_tokens, spent.output_tokens)
    assert plain(row["usd"]) == round(spent.usd, USD_DECIMALS)
    assert (row["settled_queries"], row["charged_unsettled"]) == (ledger.counts["settled"], ledger.counts["lost"])
    assert (row["run_name"], row["kind"], row["events"]) == ("views", "generate", len(SESSION_1) + len(SESSION_2))
    [idle] = rows(st, "SELECT * FROM spend_by_run WHERE run_name = 'idle'")
    assert (idle["queries"], plain(idle["usd"]), idle["settled_queries"], idle["events"]) == (0, 0, 0, 0)


def test_charges_name_each_amount_and_why(run):
    st, run_id = run
    got = [(r["query_id"], r["kind"], r["output_tokens"]) for r in
           rows(st, "SELECT * FROM charges WHERE run_id = :r ORDER BY seq, query_id", r=run_id)]
    assert got == [("q0", "settled", 20), ("q1", "maybe_billed", 50), ("q1", "settled", 33),
                   ("q3", "interrupted", 50), ("q3", "settled", 7)]


def test_queries_one_row_each_with_status_attempts_and_cost(run):
    st, run_id = run
    by_id = {r["query_id"]: r for r in rows(st, "SELECT * FROM queries WHERE run_id = :r", r=run_id)}
    assert {k: (v["status"], v["attempts"], v["queries"], v["output_tokens"]) for k, v in by_id.items()} == {
        "q0": ("settled", 1, 1, 20), "q1": ("settled", 2, 2, 83), "q2": ("abandoned", 1, 0, 0),
        "q3": ("settled", 2, 2, 57), "q4": ("open", 0, 0, 0)}
    q1 = by_id["q1"]
    assert (q1["role"], q1["model"], q1["answer"], q1["finish_reason"], q1["latency_s"]) == (
        "teacher", "m", "answer of q1", "stop", 0.25)
    assert plain(q1["usd"]) == round(WORST.usd + 0.1 + 0.2 * 33 / 1e6, USD_DECIMALS)
    assert ISO_MS.match(q1["reserved_at"]) and ISO_MS.match(q1["settled_at"]) and by_id["q4"]["settled_at"] is None


def test_samples_are_the_exported_rows_with_iso_times(run):
    st, run_id = run
    got = rows(st, "SELECT * FROM samples WHERE run_id = :r ORDER BY seq", r=run_id)
    exported = list(accepted_rows(st, run_id))
    assert [(r["sample_id"], r["question"], r["answer"]) for r in got] == [
        (r["sample_id"], r["question"], r["answer"]) for r in exported]
    assert [r["question"] for r in got] == ["What is 2+2?", "What is 3+3, again?", "What is 5+5?"]
    accepted_ts = {e.seq: e.ts for e in st.iter_events(run_id, types=["sample_accepted"])}
    assert [r["accepted_at"] for r in got] == [iso_ms(accepted_ts[r["seq"]]) for r in got]
    assert all(ISO_MS.match(r["accepted_at"]) for r in got)
    assert {(r["model"], r["seed_id"], r["reference"], r["verification"]) for r in got} == {
        ("m", "seed-1", "4", "final answer matches")}


def test_iso_ms_is_utc_to_the_millisecond():
    assert iso_ms(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1700000000.1239) == "2023-11-14T22:13:20.123Z"


def test_both_databases_answer_the_same_rows(tmp_path, pg_url):
    """A run copied from SQLite into PostgreSQL (same events, same times): every view row is equal."""
    lite = EventStore(f"sqlite:///{tmp_path / 'lite.db'}")
    run_id, seq, head = lite.start_run("views", {}, "c", [NewEvent(*to_payload(e)) for e in SESSION_1])
    lite.append(run_id, [NewEvent(*to_payload(e)) for e in SESSION_2], seq, head)
    pg = EventStore(pg_url)
    assert [c.action for c in copy_runs(lite, pg, [run_id], unfinished=True)] == ["copied"]
    for view, order in (("samples", "seq"), ("queries", "query_id"), ("charges", "seq, query_id"),
                        ("spend_by_run", "run_id")):
        a = [{k: plain(v) for k, v in r.items()} for r in rows(lite, f"SELECT * FROM {view} ORDER BY {order}")]
        b = [{k: plain(v) for k, v in r.items()} for r in rows(pg, f"SELECT * FROM {view} ORDER BY {order}")]
        assert a == b, view
        assert a, view
    lite.close()
    pg.close()
