"""A run records its seed set once, in `run_started`; export and eval read it back from there and
rebuild the run from its config only for runs recorded before the seeds were."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthledger.engine.output.dataset import accepted_rows
from synthledger.engine.run.config import load_config
from synthledger.engine.run.launch import generate
from synthledger.engine.student.runs import training_questions
from synthledger.store.eventstore import EventStore, NewEvent
from synthledger.store.hashing import GENESIS
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str, str]:
    folder = tmp_path_factory.mktemp("seeds")
    with run_in_thread() as srv:
        config = write_project(folder, srv.url, name="seeded", seeds=3, queries=3)
        store = f"sqlite:///{folder / 'store.db'}"
        result = generate(load_config(config), store, show_progress=False)
    assert result.ok, result.message
    return folder, store, result.run_id


def seed_rows(store: str, run_id: str) -> list[dict]:
    return [r for r in accepted_rows(EventStore(store), run_id, include_seeds=True) if r["strategy"] == "seed"]


def test_run_started_records_the_drawn_seeds(run):
    _, store, run_id = run
    started = next(EventStore(store).iter_events(run_id, types=["run_started"]))
    seeds = started.payload["seeds"]
    assert [sorted(s) for s in seeds] == [["answer", "id", "question"]] * 3
    assert [(s["question"], s["answer"]) for s in seeds] == [
        (f"Ann has {i} pens and buys 2 more. How many pens now?", f"#### {i + 2}") for i in range(3)]


def test_export_and_eval_read_the_seeds_without_the_seed_file(run, tmp_path):
    folder, store, run_id = run
    moved = tmp_path / "seeds.jsonl"
    (folder / "seeds.jsonl").rename(moved)  # rebuilding the run would now fail to load its seeds
    try:
        rows = seed_rows(store, run_id)
        questions = training_questions(EventStore(store), run_id)
    finally:
        moved.rename(folder / "seeds.jsonl")
    assert [r["answer"] for r in rows] == ["#### 2", "#### 3", "#### 4"]
    assert {r["question"] for r in rows} <= questions


def test_a_run_recorded_before_seeds_were_is_rebuilt_from_its_config(run):
    _, store_url, run_id = run
    store = EventStore(store_url)
    info = store.get_run(run_id)
    old = store.create_run("seeded-old", info.config, info.config_hash)
    events = []
    for ev in store.iter_events(run_id):
        payload = dict(ev.payload)
        if ev.type == "run_started":
            payload.pop("seeds")  # as a store written before run_started carried them
        events.append(NewEvent(ev.type, payload, ev.schema_version))
    store.append(old, events, 0, GENESIS)
    assert seed_rows(store_url, old) == [{**r, "run_id": old} for r in seed_rows(store_url, run_id)]
    assert training_questions(store, old) == training_questions(store, run_id)
