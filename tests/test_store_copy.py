"""`store copy SRC DST [RUN...]`: runs move between SQLite and PostgreSQL with every hash chain
checked; the same run again is a no-op, a run that went on is extended, and anything else that
differs, or a source whose chain is broken, is refused in one line with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from synthledger.engine.ledger.events import QuestionAdmitted, RunStarted, to_payload
from synthledger.store.eventstore import EventStore, NewEvent, RunNotFound

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("SYNTHLEDGER_STORE", None)
    r = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=env, timeout=180)
    r.stderr = " ".join(r.stderr.split())
    return r


def admitted(j: int) -> NewEvent:
    return NewEvent(*to_payload(QuestionAdmitted(item=f"it{j}", question=f"Wie viel ist {j}+1? ü")))


def record(st: EventStore, name: str, n: int) -> tuple[str, int, str]:
    """A finished run of n+1 valid events (so `audit` passes it) written in a few group commits."""
    start = RunStarted(config={"run": {"name": name}}, config_hash="h", plan_hash="p", version="test")
    run_id, seq, head = st.start_run(name, {"run": {"name": name}}, "h", [NewEvent(*to_payload(start))])
    for i in range(0, n, 3):
        seq, head = st.append(run_id, [admitted(j) for j in range(i, min(n, i + 3))], seq, head,
                              status="completed" if i + 3 >= n else None)
    return run_id, seq, head


def dump(st: EventStore, run_id: str) -> list[tuple]:
    return [(e.seq, e.type, e.schema_version, e.ts, e.hash, e.payload) for e in st.iter_events(run_id)]


def raw(url: str, statement: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


@pytest.fixture
def stores(tmp_path, pg_url):
    lite = f"sqlite:///{tmp_path / 'laptop.db'}"
    return lite, pg_url


def test_copy_into_postgresql_and_back(stores, tmp_path):
    lite, pg = stores
    src = EventStore(lite)
    a, _, _ = record(src, "alpha", 10)
    b, _, _ = record(src, "beta", 4)
    r = cli("store", "copy", lite, pg)
    assert r.returncode == 0, r.stderr
    assert f"copied run {a} (alpha): 11 events" in r.stdout and f"copied run {b} (beta): 5 events" in r.stdout
    dst = EventStore(pg)
    for run_id in (a, b):
        assert dump(dst, run_id) == dump(src, run_id)
        mine, theirs = src.get_run(run_id), dst.get_run(run_id)
        assert (theirs.name, theirs.created, theirs.config, theirs.last_seq, theirs.head_hash, theirs.owner) == (
            mine.name, mine.created, mine.config, mine.last_seq, mine.head_hash, None)
        assert cli("audit", run_id, "--json", "--store", pg).returncode == 0
    again = cli("store", "copy", lite, pg, "alpha")
    assert again.returncode == 0 and f"run {a} (alpha) is already in" in again.stdout and "identical" in again.stdout
    back = f"sqlite:///{tmp_path / 'back.db'}"
    home = cli("store", "copy", pg, back, a)
    assert home.returncode == 0, home.stderr
    assert [r.id for r in EventStore(back).list_runs()] == [a]
    assert dump(EventStore(back), a) == dump(src, a)


def test_a_run_that_went_on_is_extended(stores):
    lite, pg = stores
    src = EventStore(lite)
    run_id, seq, head = record(src, "growing", 5)
    assert cli("store", "copy", lite, pg).returncode == 0
    src.append(run_id, [admitted(100), admitted(101)], seq, head)
    r = cli("store", "copy", lite, pg)
    assert r.returncode == 0 and f"extended run {run_id} (growing): 2 events" in r.stdout, r.stderr
    assert dump(EventStore(pg), run_id) == dump(src, run_id)


def test_a_different_run_under_the_same_id_is_not_overwritten(stores):
    lite, pg = stores
    src = EventStore(lite)
    run_id, seq, head = record(src, "mine", 5)
    assert cli("store", "copy", lite, pg).returncode == 0
    dst = EventStore(pg)
    before = dump(dst, run_id)
    info = dst.get_run(run_id)
    dst.append(run_id, [admitted(200)], info.last_seq, info.head_hash)  # it went on over there
    src.append(run_id, [admitted(300)], seq, head)  # and differently here
    r = cli("store", "copy", lite, pg)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"run {run_id} (mine) in" in r.stderr and "refusing to overwrite it" in r.stderr
    after = dump(dst, run_id)
    assert after[:-1] == before and after[-1][5]["item"] == "it200"
    raw(pg, f"UPDATE runs SET name = 'renamed' WHERE id = '{run_id}'")
    r = cli("store", "copy", lite, pg, run_id)
    assert r.returncode == 1 and "name is not the same" in r.stderr


def test_a_broken_source_chain_is_refused_and_nothing_is_written(stores, tmp_path):
    lite, pg = stores
    src = EventStore(lite)
    good, _, _ = record(src, "good", 4)
    bad, _, _ = record(src, "bad", 6)
    raw(lite, f"UPDATE events SET payload = replace(payload, 'it2', 'it9') WHERE run_id = '{bad}' AND seq = 4")
    r = cli("store", "copy", lite, pg)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"run {bad} in" in r.stderr and "hash chain broken at seq 4; not copied" in r.stderr
    assert f"copied run {good} (good)" in r.stdout  # the others still go over
    dst = EventStore(pg)
    with pytest.raises(RunNotFound):
        dst.get_run(bad)
    raw(lite, f"DELETE FROM events WHERE run_id = '{good}' AND seq = 5")  # a cut tail
    r = cli("store", "copy", lite, f"sqlite:///{tmp_path / 'other.db'}", good)
    assert r.returncode == 1 and "ends at seq 4 but the run records 5 events" in r.stderr
    assert not (tmp_path / "other.db").exists()  # a new store nothing went into is not left behind


def test_bad_arguments_are_one_line(stores, tmp_path):
    lite, pg = stores
    missing = cli("store", "copy", f"sqlite:///{tmp_path / 'nope.db'}", pg)
    assert missing.returncode == 2 and f"store {tmp_path / 'nope.db'} does not exist" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
    EventStore(lite).close()
    unknown = cli("store", "copy", lite, pg, "no-such-run")
    assert unknown.returncode == 2 and "no run with id or name 'no-such-run'" in unknown.stderr
    new = cli("store", "copy", lite, f"sqlite:///{tmp_path / 'new.db'}", "no-such-run")
    assert new.returncode == 2 and not (tmp_path / "new.db").exists()  # refused before it was made
    assert "Traceback" not in missing.stderr + unknown.stderr


def test_a_run_still_being_extended_is_not_copied(tmp_path):
    # Its copy, resumed beside it, sent the same queries again: 222 requests for a budget of 150.
    from synthledger.store.records import owner_token

    src_url, dst_url = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    src = EventStore(src_url)
    start = RunStarted(config={"run": {"name": "live"}}, config_hash="h", plan_hash="p", version="test")
    me = owner_token()  # this test's own process: alive, its heartbeat fresh
    run_id, _, _ = src.start_run("live", {"run": {"name": "live"}}, "h", [NewEvent(*to_payload(start))], owner=me)
    r = cli("store", "copy", src_url, dst_url)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"run {run_id} (live) is still running in" in r.stderr and "twice" in r.stderr, r.stderr
    assert not (tmp_path / "b.db").exists() or not EventStore(dst_url).list_runs()
    src.release(run_id, me, "interrupted")  # stopped: now it may move, when asked by name
    assert cli("store", "copy", src_url, dst_url, "live", "--unfinished").returncode == 0


def test_a_generate_run_is_not_copied_beside_another_of_its_name(tmp_path):
    src_url, dst_url = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    mine, _, _ = record(EventStore(src_url), "twin", 2)
    theirs, _, _ = record(EventStore(dst_url), "twin", 3)
    r = cli("store", "copy", src_url, dst_url)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"already has another run named 'twin' ({theirs})" in r.stderr, r.stderr
    assert [x.id for x in EventStore(dst_url).list_runs()] == [theirs]


def test_a_run_that_has_not_finished_moves_only_when_asked(tmp_path):
    # A killed run is not live, so it was copied; resumed in both stores it paid for its remaining
    # queries twice (316 requests for a budget of 200), each store's audit ok.
    src_url, dst_url = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    src = EventStore(src_url)
    start = RunStarted(config={"run": {"name": "killed"}}, config_hash="h", plan_hash="p", version="test")
    dead = "vm:999999:0"  # a holder that is gone (kill -9)
    run_id, _, _ = src.start_run("killed", {"run": {"name": "killed"}}, "h", [NewEvent(*to_payload(start))], owner=dead)
    done, _, _ = record(src, "done", 2)
    r = cli("store", "copy", src_url, dst_url)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"run {run_id} (killed) is running in" in r.stderr and "twice" in r.stderr and "--unfinished" in r.stderr
    assert [x.id for x in EventStore(dst_url).list_runs()] == [done]  # the finished one went
    moved = cli("store", "copy", src_url, dst_url, "killed", "--unfinished")
    assert moved.returncode == 0 and f"copied run {run_id} (killed)" in moved.stdout, moved.stderr


def test_a_run_takes_along_the_runs_it_reused_answers_from(tmp_path):
    # Copied alone, its copy failed audit: "reused query ...: source <run>#14 does not exist".
    import json

    from synthledger.testing.projects import write_project
    from synthledger.testing.server import run_in_thread

    store = f"sqlite:///{tmp_path / 'a.db'}"
    with run_in_thread() as server:
        write_project(tmp_path, server.url, name="first", queries=4)
        for name in ("first", "second"):  # the second's answers all come from the first
            r = cli("generate", "-c", str(tmp_path / "run.toml"), "--name", name, "--no-progress", "--store", store)
            assert r.returncode == 0, r.stderr
    first, second = (EventStore(store).resolve(n).id for n in ("first", "second"))
    assert EventStore(store).get_run(second).status in ("completed", "budget_exhausted")
    out = f"sqlite:///{tmp_path / 'b.db'}"
    r = cli("store", "copy", store, out, "second")
    assert r.returncode == 0, r.stderr
    assert f"copied run {first} (first)" in r.stdout and f"copied run {second} (second)" in r.stdout
    report = cli("audit", second, "--json", "--store", out)
    assert report.returncode == 0 and json.loads(report.stdout)["ok"], report.stdout
