"""Where a run looks for answers another run of its store paid for (engine/run/reuse.py), on a real
SQLite store: nothing is looked up while no other run has settled anything, the store is asked
again after a few seconds (so runs writing at the same time still find each other), and a settled
answer of another run is found while the run's own is not."""

from __future__ import annotations

from synthledger.engine.ledger.events import Cost, QuerySettled, RunStarted, to_payload
from synthledger.engine.run.reuse import RECHECK_S, ReuseSource
from synthledger.store.eventstore import EventStore, NewEvent
from synthledger.store.keys import key_of


def settled(qid: str, text: str) -> NewEvent:
    type_, payload = to_payload(QuerySettled(query_id=qid, attempt=1, text=text, actual=Cost(queries=1)))
    return NewEvent(type_, payload, key=key_of(type_, payload))


def start(store: EventStore, name: str, *events: NewEvent) -> str:
    type_, payload = to_payload(RunStarted(config={"run": {"name": name}}, config_hash="c", plan_hash="p",
                                           version="test", budget={}))
    run_id, _, _ = store.start_run(name, {}, "c", [NewEvent(type_, payload), *events])
    return run_id


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lookups_wait_for_another_run_to_have_settled_something(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    mine = start(store, "mine", settled("q-own", "my answer"))
    clock = Clock()
    source = ReuseSource(store, lambda: mine, clock=clock)
    assert source.find("q-own") is None  # its own answer is not "reuse"

    other = start(store, "other", settled("q1", "paid by the other run"))
    assert source.find("q1") is None  # not asked again before the recheck interval
    clock.now += RECHECK_S
    found = source.find("q1")
    assert found is not None and found[0] == other and found[2]["text"] == "paid by the other run"
    assert source.find("q-unknown") is None
    store.close()


def test_a_store_with_other_runs_is_looked_up_from_the_first_query(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    other = start(store, "other", settled("q1", "paid earlier"))
    mine = start(store, "mine")
    found = ReuseSource(store, lambda: mine, clock=Clock()).find("q1")
    assert found is not None and found[0] == other
    store.close()


def test_a_base_url_from_the_providers_variable_keeps_two_servers_apart(tmp_path, monkeypatch):
    """ANTHROPIC_BASE_URL (as OPENAI_BASE_URL) names the endpoint when base_url is unset: it is
    recorded as the run's base_url, so answers from one server are not reused by a run asking
    another (QA: the second run sent nothing and took all three answers of the first)."""
    from synthledger.testing.cli_runs import Project, Server

    first, second = Server(), Server()
    try:
        proj = Project(tmp_path, first.url, 3)
        cfg = proj.write(teacher={"provider": "anthropic", "base_url": None}, budget={"queries": 3})
        monkeypatch.setenv("ANTHROPIC_BASE_URL", first.url)
        proj.run_to(cfg, "budget_exhausted")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", second.url)
        res = proj.generate(cfg, "--name", "t2")
        assert res.returncode == 0, res.stderr
        assert first.stats()["answered"] == 3 and second.stats()["answered"] == 3
        recorded = [e["config"]["teacher"]["base_url"] for e in proj.events("run_started")]
        assert recorded == [first.url, second.url]
    finally:
        first.close()
        second.close()
