"""The event store: appends, reads, optimistic concurrency, leases, URLs, migrations, corruption and
the hash chain as `audit` checks it (through the real command line).

Every guarantee is checked on SQLite and on a real PostgreSQL server (`store_url`, tests/conftest.py):
both enforce it in the database, not in the process."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from synthledger.engine.ledger.events import (Cost, ItemDone, QueryDispatched, QueryReserved, QuerySettled, RunFinished,
                                       RunStarted, to_payload)
from synthledger.engine.ledger.ledger import BudgetSpec, Limits
from synthledger.store.eventstore import (ENV_STORE, ConcurrencyError, EventStore, NewEvent, RunNotFound,
                                          StoreError, owner_token, resolve_url)
from synthledger.store.hashing import GENESIS
from synthledger.store.migrations import LATEST, MIGRATIONS

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")
ENV = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}


def ev(type_: str, **payload) -> NewEvent:
    return NewEvent(type_, payload)


def run_events(n_queries: int = 3, budget_queries: int = 10) -> list[NewEvent]:
    """A small, valid run as the engine would record it: every query reserved, sent, settled."""
    events = [RunStarted(config={"run": {"name": "t"}}, config_hash="c", plan_hash="p", version="test",
                         budget=BudgetSpec(Limits(queries=budget_queries)).as_dict())]
    for i in range(n_queries):
        qid = f"q{i}"
        events += [
            QueryReserved(query_id=qid, key=f"k{i}", role="teacher", purpose="answer", strategy="aa",
                          item=f"it{i}", provider="openai-compatible", model="m",
                          worst=Cost(queries=1, input_tokens=100, output_tokens=50, usd=0.001)),
            QueryDispatched(query_id=qid, attempt=1),
            QuerySettled(query_id=qid, attempt=1, text=f"answer {i}",
                         actual=Cost(queries=1, input_tokens=40, output_tokens=20, usd=0.0004)),
            ItemDone(item=f"it{i}", strategy="aa", outcome="accepted"),
        ]
    events.append(RunFinished(status="completed"))
    return [NewEvent(*to_payload(e)) for e in events]


def db_url(tmp_path: Path, name: str = "store.db") -> str:
    return f"sqlite:///{tmp_path / name}"


@pytest.fixture
def store(store_url):
    st = EventStore(store_url)
    yield st
    st.close()


def raw_sql(url: str, statement: str, *params) -> list[tuple]:
    """Run SQL on the store behind our back (as a tamperer or another tool would), `?` placeholders."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            marks = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            res = conn.exec_driver_sql(statement.replace("?", marks), tuple(params))
            return [tuple(r) for r in res] if res.returns_rows else []
    finally:
        engine.dispose()


def count_events(st: EventStore, run_id: str) -> int:
    return sum(1 for _ in st.iter_events(run_id))


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=60)
    r.stderr = " ".join(r.stderr.split())  # the console wraps long lines; compare words, not layout
    return r


# ---- append and read ------------------------------------------------------------------------------


def test_append_then_read_back_in_order(store):
    run_id = store.create_run("r", {"a": 1}, "h")
    last, head = store.append(run_id, [ev("x", n=1, text="ü"), ev("y", n=2), ev("x", n=3)], 0, GENESIS)
    assert last == 3 and head != GENESIS
    got = list(store.iter_events(run_id))
    assert [(e.seq, e.type, e.payload) for e in got] == [(1, "x", {"n": 1, "text": "ü"}), (2, "y", {"n": 2}),
                                                         (3, "x", {"n": 3})]
    assert got[-1].hash == head
    info = store.get_run(run_id)
    assert (info.last_seq, info.head_hash, info.config) == (3, head, {"a": 1})
    assert [e.seq for e in store.iter_events(run_id, 2)] == [2, 3]
    assert [e.payload["n"] for e in store.iter_events(run_id, types=["x"])] == [1, 3]


def test_batches_extend_one_chain_and_pages_stream_it(store):
    run_id = store.create_run("r", {}, "h")
    seq, head = 0, GENESIS
    for b in range(7):  # 7 batches of 3 events each
        seq, head = store.append(run_id, [ev("e", b=b, i=i) for i in range(3)], seq, head)
    assert seq == 21
    # a page size that does not divide the run: every event exactly once, in order
    assert [e.seq for e in store.iter_events(run_id, page=4)] == list(range(1, 22))
    assert [e.seq for e in store.iter_events(run_id, 19, page=2)] == [19, 20, 21]
    assert store.append(run_id, [], seq, head) == (seq, head)  # an empty batch writes nothing
    assert store.get_run(run_id).last_seq == 21


def test_a_filtered_stream_crosses_pages_with_no_match_and_sees_events_appended_meanwhile(store):
    """Pages are ranges of sequence numbers: a range where no event has the asked type ends
    nothing, and what is appended while a reader streams is read too."""
    run_id = store.create_run("r", {}, "h")
    seq, head = store.append(run_id, [ev("x", i=0)] + [ev("y", i=i) for i in range(1, 12)] + [ev("x", i=12)],
                             0, GENESIS)
    reader = store.iter_events(run_id, types=["x"], page=3)
    assert next(reader).payload["i"] == 0
    seq, head = store.append(run_id, [ev("y", i=13), ev("x", i=14)], seq, head)
    assert [e.payload["i"] for e in reader] == [12, 14]
    assert list(store.iter_events(run_id, 16)) == [] and list(store.iter_events("no-such-run")) == []


def test_stale_expected_seq_fails_and_writes_nothing(store):
    run_id = store.create_run("r", {}, "h")
    seq, head = store.append(run_id, [ev("a", i=1), ev("a", i=2)], 0, GENESIS)
    with pytest.raises(ConcurrencyError, match="expected last seq 0, found 2"):
        store.append(run_id, [ev("b", i=3), ev("b", i=4)], 0, GENESIS)
    assert count_events(store, run_id) == 2
    info = store.get_run(run_id)
    assert (info.last_seq, info.head_hash) == (seq, head)
    # the writer that read the current head goes on normally
    assert store.append(run_id, [ev("c")], seq, head)[0] == 3


def test_two_store_instances_race_for_the_same_seq(store_url):
    """Two processes' views of one store: only one of two appends after seq 0 can win."""
    a, b = EventStore(store_url), EventStore(store_url)
    run_id = a.create_run("r", {}, "h")
    a.append(run_id, [ev("from_a")], 0, GENESIS)
    with pytest.raises(ConcurrencyError):
        b.append(run_id, [ev("from_b")], 0, GENESIS)
    assert [e.type for e in b.iter_events(run_id)] == ["from_a"]


def test_unknown_run_is_named(store):
    with pytest.raises(RunNotFound, match="nope"):
        store.get_run("nope")
    with pytest.raises(ConcurrencyError, match="no run 'nope'"):
        store.append("nope", [ev("a")], 0, GENESIS)


def test_a_run_is_named_by_its_id_prefix_as_text_never_as_a_pattern(store):
    # `show _d` showed run 6d4f...: the prefix went into LIKE, where `_` and `%` are wildcards.
    first, second = (store.create_run(name, {}, "h") for name in ("first", "second"))
    assert store.resolve(first[:8]).id == first and store.resolve(second).id == second
    for ref in ("_" + first[1:6], "%" + first[-2:], first[:2] + "%", ""):
        with pytest.raises(RunNotFound):
            store.resolve(ref)


def test_a_writer_blocked_behind_another_fails_once_it_commits(store_url):
    """Truly concurrent writers: while another writer's transaction extends the run, our append waits
    on the database's lock, then finds the run moved on: the same error as a stale read."""
    st = EventStore(store_url)
    run_id = st.create_run("r", {}, "h")
    other = create_engine(store_url)
    outcome: dict = {}

    def ours() -> None:
        try:
            outcome["ok"] = st.append(run_id, [ev("ours")], 0, GENESIS)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    with other.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.execute(text("UPDATE runs SET last_seq = 1, head_hash = 'x' WHERE id = :id AND last_seq = 0"),
                     {"id": run_id})
        conn.execute(text("INSERT INTO events (run_id, seq, type, schema_version, payload, ts, hash) "
                          "VALUES (:id, 1, 'theirs', 1, '{}', 0, 'x')"), {"id": run_id})
        writer = threading.Thread(target=ours)
        writer.start()
        writer.join(0.5)
        assert writer.is_alive(), f"our append did not wait for the other transaction: {outcome}"
        conn.commit()
    writer.join(30)
    other.dispose()
    assert isinstance(outcome.get("error"), ConcurrencyError), outcome
    assert "was extended by another writer (expected last seq 0, found 1)" in str(outcome["error"])
    assert [e.type for e in st.iter_events(run_id)] == ["theirs"]
    st.close()


def test_many_writers_on_many_runs_lose_nothing(store_url):
    """Four store instances (as four processes would hold them) append to four runs at once."""
    from synthledger.engine.ledger.audit import audit_events

    def write(run_id: str, out: list) -> None:
        st = EventStore(store_url)
        seq, head = 0, GENESIS
        for b in range(25):
            seq, head = st.append(run_id, [ev("question_admitted", item=f"{b}.{i}", question="q") for i in range(20)],
                                  seq, head)
        out.append(seq)
        st.close()

    setup = EventStore(store_url)
    ids = [setup.create_run(f"w{i}", {}, "h") for i in range(4)]
    done: list[int] = []
    threads = [threading.Thread(target=write, args=(run_id, done)) for run_id in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert done == [500] * 4
    for run_id in ids:
        info = setup.get_run(run_id)
        report = audit_events(run_id, setup.iter_events(run_id), head=(info.last_seq, info.head_hash))
        assert report.events == 500 and not [v for v in report.violations if "chain" in v.message or "seq" in v.message]
    setup.close()


# ---- the lease ------------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_owner_refused_at_once_while_holder_lives(store):
    me, other = owner_token(), owner_token()
    run_id = store.create_run("r", {}, "h", owner=me)
    t0 = time.monotonic()
    with pytest.raises(ConcurrencyError, match="another process"):
        store.acquire(run_id, other)
    assert time.monotonic() - t0 < 1.0  # refused at once, not after a timeout
    with pytest.raises(ConcurrencyError, match="held by another process"):
        store.append(run_id, [ev("a")], 0, GENESIS, owner=other)
    with pytest.raises(ConcurrencyError):
        store.append(run_id, [ev("a")], 0, GENESIS)  # no owner at all: refused too
    assert count_events(store, run_id) == 0
    store.append(run_id, [ev("a")], 0, GENESIS, owner=me)
    store.heartbeat(run_id, me)
    store.release(run_id, me, "completed")
    store.acquire(run_id, other)  # released: free to take
    assert store.get_run(run_id).owner == other


def test_lease_taken_over_when_holder_process_is_dead(store):
    corpse = f"{socket.gethostname()}:{dead_pid()}:deadbeef"
    run_id = store.create_run("r", {}, "h", owner=corpse)  # its heartbeat is fresh: only the pid tells
    seq, head = store.append(run_id, [ev("a")], 0, GENESIS, owner=corpse)
    me = owner_token()
    store.acquire(run_id, me)
    assert store.get_run(run_id).owner == me
    with pytest.raises(ConcurrencyError):
        store.append(run_id, [ev("late")], seq, head, owner=corpse)  # the old holder can no longer write
    with pytest.raises(ConcurrencyError, match="lost the lease"):
        store.heartbeat(run_id, corpse)
    assert store.append(run_id, [ev("b")], seq, head, owner=me)[0] == 2


def test_lease_of_another_host_judged_by_heartbeat_age(store):
    remote = "some-other-host:1:abcd"
    run_id = store.create_run("r", {}, "h", owner=remote)
    with pytest.raises(ConcurrencyError):
        store.acquire(run_id, owner_token(), ttl_s=30)
    time.sleep(0.05)
    store.acquire(run_id, owner_token(), ttl_s=0.01)  # its heartbeat is older than the ttl: stale


# ---- URLs, migrations, bad files --------------------------------------------------------------------


@pytest.mark.parametrize("url", ["file", "sqlite://", "sqlite:///:memory:"])
def test_any_sqlalchemy_url(tmp_path, url):
    st = EventStore(db_url(tmp_path) if url == "file" else url)
    run_id = st.create_run("r", {}, "h")
    out: dict = {}

    def writer() -> None:  # the recorder commits from a worker thread: it must see the same database
        out["r"] = st.append(run_id, [ev("a"), ev("b")], 0, GENESIS)

    t = threading.Thread(target=writer)
    t.start()
    t.join()
    assert out["r"][0] == 2
    assert [e.type for e in st.iter_events(run_id)] == ["a", "b"]
    st.close()


def test_url_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_STORE, raising=False)
    assert resolve_url(None).endswith(".synthledger/synthledger.db")
    monkeypatch.setenv(ENV_STORE, "sqlite:///from-env.db")
    assert resolve_url(None) == "sqlite:///from-env.db"
    assert resolve_url("sqlite:///explicit.db") == "sqlite:///explicit.db"
    monkeypatch.setenv(ENV_STORE, "postgresql://team@db.example/ledger")
    assert resolve_url(None) == "postgresql+psycopg://team@db.example/ledger"


def test_migrations_are_recorded_once(store_url):
    EventStore(store_url).close()
    EventStore(store_url).close()  # reopening applies nothing twice
    rows = raw_sql(store_url, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows == [(v, n) for v, n, _ in MIGRATIONS]
    assert rows[-1][0] == LATEST
    if store_url.startswith("sqlite"):
        tables = {r[0] for r in raw_sql(store_url, "SELECT name FROM sqlite_master WHERE type='table'")}
    else:
        tables = {r[0] for r in raw_sql(store_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"runs", "events", "schema_migrations"} <= tables


def test_many_processes_opening_a_new_store_migrate_it_once(store_url):
    """Several writers starting at once on a fresh store: one migrates, the others wait and find it done."""
    code = "import sys; from synthledger.store.eventstore import EventStore; EventStore(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, store_url], stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    rows = raw_sql(store_url, "SELECT version FROM schema_migrations ORDER BY version")
    assert rows == [(v,) for v, _, _ in MIGRATIONS]


def test_store_from_a_newer_release_is_refused(store_url):
    EventStore(store_url).close()
    raw_sql(store_url, "INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", LATEST + 1)
    with pytest.raises(StoreError, match=rf"schema version {LATEST + 1} is newer"):
        EventStore(store_url)
    r = cli("runs", "--store", store_url)
    assert r.returncode != 0 and "newer" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_file_names_its_path(tmp_path):
    bad = tmp_path / "garbage.db"
    bad.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError) as info:
        EventStore(f"sqlite:///{bad}")
    assert str(bad) in str(info.value) and "not a database" in str(info.value)
    r = cli("runs", "--store", f"sqlite:///{bad}")
    assert r.returncode != 0
    assert str(bad) in r.stderr and "not a database" in r.stderr and "Traceback" not in r.stderr


def test_directory_instead_of_a_file(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        EventStore(f"sqlite:///{tmp_path}")


def test_unusable_url_is_a_store_error():
    with pytest.raises(StoreError, match="cannot open store"):
        EventStore("nosuchdialect://x/y")


def test_postgresql_urls_without_a_driver_name_mean_psycopg(pg_url):
    bare = pg_url.replace("postgresql+psycopg://", "postgresql://")
    assert resolve_url(bare) == pg_url and resolve_url(bare.replace("postgresql:", "postgres:")) == pg_url
    st = EventStore(bare)
    run_id = st.create_run("r", {}, "h")
    assert st.append(run_id, [ev("a")], 0, GENESIS)[0] == 1
    st.close()


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path):
    url = f"postgresql://me:s3cret-pw@/ledger?host={tmp_path}"  # no server listens there
    with pytest.raises(StoreError) as info:
        EventStore(url)
    assert "s3cret-pw" not in str(info.value) and "me:***@" in str(info.value)
    r = cli("runs", "--store", url)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "s3cret-pw" not in r.stderr + r.stdout
    assert "cannot open store postgresql+psycopg://me:***@/ledger" in r.stderr


NO_PSYCOPG = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "psycopg":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_missing_driver_names_the_extra(tmp_path):
    r = subprocess.run([sys.executable, "-c", NO_PSYCOPG, CLI, "runs", "--store", f"postgresql://me@/db?host={tmp_path}"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    message = " ".join(r.stderr.split())
    assert "needs the psycopg driver" in message and "pip install 'synthledger[postgres]'" in message
    assert len(r.stderr.strip().splitlines()) == 1


# ---- the hash chain, checked by `audit` through the command line -------------------------------------------
# run_events(3): 1 run_started; query i at 4i+2 reserved, 4i+3 dispatched, 4i+4 settled, 4i+5 item_done; 14 finished


@pytest.fixture
def recorded(store_url):
    url = store_url
    st = EventStore(url)
    run_id = st.create_run("chain", {}, "h")
    events = run_events(3)
    seq, head = 0, GENESIS
    for i in range(0, len(events), 4):  # a few group commits
        seq, head = st.append(run_id, events[i:i + 4], seq, head)
    st.close()
    return url, run_id, url


def audit_json(url: str, run_id: str) -> tuple[int, dict]:
    r = cli("audit", run_id, "--json", "--store", url)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


def sql(url: str, statement: str, *params) -> None:
    raw_sql(url, statement, *params)


def test_untouched_run_audits_clean(recorded):
    url, run_id, _ = recorded
    rc, report = audit_json(url, run_id)
    assert rc == 0 and report["ok"] and report["violations"] == []
    assert report["events"] == 14 and report["spent"]["queries"] == 3 and report["spent"]["output_tokens"] == 60


def test_tampered_payload_is_the_first_bad_seq(recorded):
    url, run_id, db = recorded
    sql(db, "UPDATE events SET payload = replace(payload, '\"output_tokens\":20', '\"output_tokens\":2') "
            "WHERE run_id = ? AND seq = 8", run_id)
    rc, report = audit_json(url, run_id)
    assert rc == 1 and not report["ok"]
    assert report["violations"][0]["seq"] == 8 and "hash chain" in report["violations"][0]["message"]
    # only the edited event is blamed: the chain after it still links to its stored hash
    assert {v["seq"] for v in report["violations"]} == {8}


def test_rehashed_edit_breaks_the_next_link(recorded):
    """An editor who also rewrites the edited event's hash still breaks the event after it."""
    url, run_id, db = recorded
    sql(db, "UPDATE events SET payload = replace(payload, 'answer 1', 'answer X'), hash = ? "
            "WHERE run_id = ? AND seq = 8", "f" * 64, run_id)
    rc, report = audit_json(url, run_id)
    assert rc == 1 and [v["seq"] for v in report["violations"]][:2] == [8, 9]


def test_deleted_event_is_the_first_bad_seq(recorded):
    url, run_id, db = recorded
    sql(db, "DELETE FROM events WHERE run_id = ? AND seq = 8", run_id)  # q1's settlement
    rc, report = audit_json(url, run_id)
    assert rc == 1 and report["violations"][0]["seq"] == 8
    assert "missing" in report["violations"][0]["message"]


def test_deleted_tail_is_caught(recorded):
    url, run_id, db = recorded
    sql(db, "DELETE FROM events WHERE run_id = ? AND seq >= 13", run_id)
    rc, report = audit_json(url, run_id)
    assert rc == 1 and report["violations"][0]["seq"] == 13


def test_event_appended_outside_the_store_is_caught(recorded):
    url, run_id, db = recorded
    sql(db, "INSERT INTO events SELECT run_id, 15, type, schema_version, payload, ts, hash FROM events "
            "WHERE run_id = ? AND seq = 14", run_id)
    rc, report = audit_json(url, run_id)
    assert rc == 1 and report["violations"][0]["seq"] == 15 and "outside the store" in report["violations"][0]["message"]


def test_swapped_events_are_the_first_bad_seq(recorded):
    url, run_id, db = recorded
    for a, b in ((10, -1), (11, 10), (-1, 11)):  # swap q2's reservation (10) and dispatch (11)
        sql(db, "UPDATE events SET seq = ? WHERE run_id = ? AND seq = ?", b, run_id, a)
    rc, report = audit_json(url, run_id)
    assert rc == 1 and report["violations"][0]["seq"] == 10


def test_human_audit_output_names_the_first_bad_seq(recorded):
    url, run_id, db = recorded
    sql(db, "DELETE FROM events WHERE run_id = ? AND seq = 5", run_id)
    r = cli("audit", run_id, "--store", url)
    assert r.returncode == 1 and "first bad sequence number 5" in r.stderr


def test_benchmark_script_runs_and_reports_ratios(tmp_path, pg_url):
    """Keeps benchmarks/eventstore.py working; the real figures come from a 1M-event run."""
    out = tmp_path / "bench.json"
    bench = Path(CLI).parent / "benchmarks" / "eventstore.py"
    r = subprocess.run([sys.executable, str(bench), "--events", "3000", "--batch", "500", "--out", str(out),
                        "--dir", str(tmp_path), "--pg-url", pg_url], capture_output=True, text=True, env=ENV,
                       timeout=300)
    assert r.returncode in (0, 1), r.stderr  # 1 = a target missed, which a tiny run on a busy machine may
    result = json.loads(out.read_text())
    assert result["details"]["appends"]["events"] == 3000 and result["details"]["replay"]["events"] == 3000
    assert result["details"]["replay"]["violations"] == 0 and result["details"]["audit"]["ok"] is True
    assert set(result["ratio_vs_target"]) == {"appends_per_s", "replayed_per_s", "replay_peak_rss_mb"}
    assert result["appends_vs_raw_sqlite"] > 0
    pg = result["postgresql"]  # the same figures, for PostgreSQL, from the same run
    assert pg["details"]["appends"]["events"] == 3000 and pg["details"]["replay"]["violations"] == 0
    assert pg["details"]["audit"]["ok"] is True and set(pg["ratio_vs_target"]) == set(result["ratio_vs_target"])
    for figures in (result, pg):  # 4 writers on 4 runs of one store
        assert figures["details"]["concurrent"]["events"] == 3000 - 3000 % 4 and figures["concurrent_appends_per_s"] > 0


def test_read_ahead_keeps_order_raises_the_source_error_and_stops_when_closed():
    from synthledger.store.engines import read_ahead

    assert list(read_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]

    def failing():
        yield 1
        raise StoreError("page 2 cannot be read")

    items = read_ahead(failing())
    assert next(items) == 1
    with pytest.raises(StoreError, match="page 2"):
        next(items)

    advanced = []

    def endless():
        for i in range(1000):
            advanced.append(i)
            yield i

    items = read_ahead(endless())
    assert next(items) == 0
    items.close()  # the worker finishes the one page it was reading ahead, then stops
    assert advanced == [0, 1]


def test_an_abandoned_stream_leaves_the_store_usable(store):
    run_id = store.create_run("r", {}, "h")
    seq, head = store.append(run_id, [ev("e", i=i) for i in range(30)], 0, GENESIS)
    for _ in range(20):  # more abandoned readers than the connection pool holds
        reader = store.iter_events(run_id, page=4)
        assert next(reader).seq == 1
        reader.close()
    assert store.append(run_id, [ev("e", i=30)], seq, head)[0] == 31
    assert [e.seq for e in store.iter_events(run_id, 29, page=4)] == [29, 30, 31]
