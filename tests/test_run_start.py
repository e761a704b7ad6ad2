"""A run exists with its `run_started` or not at all, and a store someone else holds locked is one
clear line: on SQLite and on PostgreSQL, through the real command line.

Before, `generate` created the run row in one commit and recorded run_started in the next; a kill
between them left a `running` run with no events that `--resume` could neither read ("has no
recorded config") nor skip ("was started with a different plan"). Both the failure of that first
commit and the empty run an older release left behind are reproduced here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from synthledger.store.eventstore import EventStore, NewEvent, StoreError
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def cli(*args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(extra_env or {})}
    env.pop("SYNTHLEDGER_STORE", None)
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=180)


def ddl(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for s in statements:
            conn.exec_driver_sql(s)
    engine.dispose()


def refuse_events(url: str) -> None:
    """Make the database itself reject every event row, as a full disk would reject the write."""
    if url.startswith("sqlite"):
        ddl(url, "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'no room for events'); END")
    else:
        ddl(url, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN RAISE EXCEPTION 'no room for events'; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse()")


def allow_events(url: str) -> None:
    ddl(url, "DROP TRIGGER refuse" if url.startswith("sqlite") else "DROP TRIGGER refuse ON events")


def runs(url: str, cwd: Path) -> list[dict]:
    r = cli("runs", "--json", "--store", url, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def last_run(stdout: str) -> tuple[str, str]:
    words = stdout.strip().splitlines()[-1].split()
    assert words[0] == "run", stdout
    return words[1], words[2]


def test_start_run_writes_the_run_and_its_first_events_in_one_commit(store_url):
    st = EventStore(store_url)
    run_id, last, head = st.start_run("r", {"a": 1}, "h", [NewEvent("run_started", {"x": 1}), NewEvent("y", {})])
    info = st.get_run(run_id)
    assert (info.last_seq, info.head_hash, last) == (2, head, 2)
    assert [e.type for e in st.iter_events(run_id)] == ["run_started", "y"]
    refuse_events(store_url)
    with pytest.raises(StoreError, match="no room for events"):
        st.start_run("r2", {}, "h", [NewEvent("run_started", {})])
    assert [r.name for r in st.list_runs()] == ["r"]  # no run row without its events
    st.close()


def test_a_run_whose_start_cannot_be_recorded_leaves_nothing(store_url, tmp_path):
    EventStore(store_url).close()
    with run_in_thread() as srv:
        write_project(tmp_path, srv.url, name="first", queries=4)
        refuse_events(store_url)
        failed = cli("generate", "-c", "run.toml", "--no-progress", "--store", store_url, cwd=tmp_path)
        assert failed.returncode != 0
        assert "no room for events" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
        assert srv.stats()["answered"] == 0
        assert runs(store_url, tmp_path) == []
        allow_events(store_url)
        # the same command with --resume starts it: nothing was recorded, so nothing is lost or paid twice
        res = cli("generate", "-c", "run.toml", "--resume", "--no-progress", "--store", store_url, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert srv.stats()["answered"] == 4
    assert last_run(res.stdout)[1] == "budget_exhausted"


def test_an_empty_run_left_by_an_older_release_is_passed_over(store_url, tmp_path):
    with run_in_thread() as srv:
        write_project(tmp_path, srv.url, name="early", queries=4)
        st = EventStore(store_url)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        empty = st.create_run("early", {}, "h", owner=f"{socket.gethostname()}:{dead}:gone")
        st.close()
        # plain --resume must not pick the empty run: it has nothing to resume from
        bare = cli("generate", "--resume", "--no-progress", "--store", store_url, cwd=tmp_path)
        assert bare.returncode == 2 and "no unfinished run" in bare.stderr, bare.stderr
        res = cli("generate", "-c", "run.toml", "--resume", "--no-progress", "--store", store_url, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    run_id, status = last_run(res.stdout)
    assert run_id != empty and status == "budget_exhausted"
    audit = cli("audit", run_id, "--json", "--store", store_url, cwd=tmp_path)
    assert audit.returncode == 0 and json.loads(audit.stdout)["spent"]["queries"] == 4


# ---- a store held locked by someone else ------------------------------------------------------------


def test_a_locked_sqlite_store_names_itself_and_its_holder(tmp_path):
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    EventStore(url).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer in the middle of a transaction
    try:
        with run_in_thread() as srv:
            write_project(tmp_path, srv.url, name="blocked", queries=4)
            for args, extra in ((["--busy-timeout", "0.5"], None), ([], {"SYNTHLEDGER_BUSY_TIMEOUT": "0.3"})):
                r = cli(*args, "generate", "-c", "run.toml", "--no-progress", "--store", url, cwd=tmp_path,
                        extra_env=extra)
                message = " ".join(r.stderr.split())
                assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
                assert r.stderr.count("error:") == 1 and f"store {db} is busy" in message
                assert f"pid {os.getpid()}" in message  # the holder: this test process
                assert "gave up after" in message and "--busy-timeout" in message
            assert srv.stats()["answered"] == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert runs(url, tmp_path) == []  # nothing half-written


def test_a_busy_store_is_one_line_even_when_its_holder_has_a_multi_line_command(tmp_path):
    """The holder's command line (here a `python -c` script) may hold newlines and be cut short: the
    error stays one line, its parenthesis closed, and shows --busy-timeout where it goes: before the
    command (after it, Typer answers "No such option")."""
    db = tmp_path / "store.db"
    EventStore(f"sqlite:///{db}").close()
    script = ("import sqlite3, sys, time\n"
              "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "con.execute('BEGIN IMMEDIATE')  # another writer, mid-transaction, for a long while\n"
              "print('held', flush=True)\n"
              "time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with run_in_thread() as srv:
            write_project(tmp_path, srv.url, name="blocked", queries=4)
            r = cli("--busy-timeout", "0.5", "generate", "-c", "run.toml", "--no-progress", "--store", str(db),
                    cwd=tmp_path)
            assert srv.stats()["answered"] == 0
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and all(ln.startswith(("error:", "store ")) for ln in lines), r.stderr
    line = errors[0]
    assert re.search(rf"held by pid {holder.pid} \(\S[^;]*\); gave up after 0.5 s", line), line
    assert "--busy-timeout SECONDS <command>" in line and "SYNTHLEDGER_BUSY_TIMEOUT" in line, line
    assert runs(f"sqlite:///{db}", tmp_path) == []


def test_a_locked_postgresql_store_names_the_session_holding_it(pg_url, tmp_path):
    import psycopg

    EventStore(pg_url).close()
    from sqlalchemy.engine import make_url

    u = make_url(pg_url)
    holder = psycopg.connect(host=u.query["host"], user=u.username, dbname=u.database,
                             application_name="the-test-holder")
    holder.execute("LOCK TABLE runs IN EXCLUSIVE MODE")  # held until the transaction ends
    try:
        with run_in_thread() as srv:
            write_project(tmp_path, srv.url, name="blocked", queries=4)
            r = cli("--busy-timeout", "0.5", "generate", "-c", "run.toml", "--no-progress", "--store", pg_url,
                    cwd=tmp_path)
            assert srv.stats()["answered"] == 0
    finally:
        holder.rollback()
        holder.close()
    message = " ".join(r.stderr.split())
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("error:") == 1, r.stderr
    assert "is busy" in message and "the-test-holder" in message and "gave up after 0.5 s" in message
    assert runs(pg_url, tmp_path) == []


def _runs_while_locked(db: Path, begin: str, hold_s: float, busy_timeout: str) -> subprocess.CompletedProcess:
    """`runs` on `db` while another connection holds it (`begin`) for `hold_s` seconds."""
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute(begin)
    release = threading.Timer(hold_s, lambda: holder.execute("ROLLBACK"))
    release.start()
    try:
        return cli("--busy-timeout", busy_timeout, "runs", "--store", f"sqlite:///{db}", cwd=db.parent)
    finally:
        release.join()
        holder.close()


def test_a_store_locked_for_a_while_is_waited_for_as_long_as_busy_timeout_says(tmp_path):
    # A store not (yet) in WAL mode: switching it waited only the driver's 5 s, whatever --busy-timeout said.
    db = tmp_path / "store.db"
    EventStore(f"sqlite:///{db}").close()
    sqlite3.connect(db, isolation_level=None).execute("PRAGMA journal_mode=delete").fetchall()
    r = _runs_while_locked(db, "BEGIN EXCLUSIVE", 6.5, "60")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_a_huge_busy_timeout_still_waits(tmp_path):
    # 32-bit milliseconds: 3,000,000 s was read as no wait at all, and the locked store failed at once.
    db = tmp_path / "store.db"
    EventStore(f"sqlite:///{db}").close()
    r = _runs_while_locked(db, "BEGIN IMMEDIATE", 1.5, "3000000")  # another writer, in WAL mode
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_a_bad_busy_timeout_is_one_line(tmp_path):
    r = cli("runs", "--store", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path,
            extra_env={"SYNTHLEDGER_BUSY_TIMEOUT": "soon"})
    assert r.returncode == 2 and "SYNTHLEDGER_BUSY_TIMEOUT must be a number of seconds" in r.stderr
    assert "Traceback" not in r.stderr


def test_resuming_a_finished_run_by_name_says_what_does_go_on(tmp_path):
    # It said "run with --config (and without --resume) to start one", which was then refused:
    # "run name 'dup' is taken".
    store = f"sqlite:///{tmp_path / 'store.db'}"
    with run_in_thread() as srv:
        write_project(tmp_path, srv.url, name="dup", queries=2)
        assert cli("generate", "-c", "run.toml", "--no-progress", "--store", store, cwd=tmp_path).returncode == 0
        again = cli("generate", "-c", "run.toml", "--resume", "--no-progress", "--store", store, cwd=tmp_path)
        line = " ".join(again.stderr.split())
        assert again.returncode == 2 and "Traceback" not in line
        run_id = EventStore(store).resolve("dup").id
        assert f"run {run_id} (dup) has finished (budget_exhausted)" in line, line
        assert f"generate --run {run_id} --set budget.queries=N" in line and "--name NEW" in line, line
        more = cli("generate", "--run", run_id, "--set", "budget.queries=4", "--no-progress", "--store", store,
                   cwd=tmp_path)
        assert more.returncode == 0 and "budget_exhausted" in more.stdout, more.stderr


def test_a_resume_that_would_count_unpriced_queries_as_free_against_a_usd_budget_is_refused(tmp_path):
    # Resumed with a price and a usd limit, the first session's queries (no price known: $0) were
    # taken as free, and the run spent $2.28 against $1 by its own prices (QA).
    store = f"sqlite:///{tmp_path / 'store.db'}"
    price = ["--set", 'pricing."test-teacher".input_per_mtok=1000.0',
             "--set", 'pricing."test-teacher".output_per_mtok=3000.0']
    with run_in_thread() as srv:
        write_project(tmp_path, srv.url, name="unpriced", queries=4)
        assert cli("generate", "-c", "run.toml", "--no-progress", "--store", store, cwd=tmp_path).returncode == 0
        run_id = EventStore(store).resolve("unpriced").id
        r = cli("generate", "--run", run_id, "--set", "budget.queries=8", "--set", "budget.usd=1.0", *price,
                "--no-progress", "--store", store, cwd=tmp_path)
        line = " ".join(r.stderr.split())
        assert r.returncode == 2 and "Traceback" not in line, line
        assert "paid queries to 'test-teacher' with no price known, so they count $0" in line, line
        more = cli("generate", "--run", run_id, "--set", "budget.queries=8", *price, "--no-progress", "--store", store,
                   cwd=tmp_path)  # a price without a usd limit: nothing is taken as free
        assert more.returncode == 0, more.stderr
