"""The default store, a SQLite file, is opened with the standard library's sqlite3 (store/lite.py)
instead of SQLAlchemy, whose import cost half a second of every command. What the store's code
relies on must hold as it did under SQLAlchemy: its exceptions, its rows, its transactions, and
the write-ahead log folded back into the file when the store is closed."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import sqlalchemy.exc

from synthledger.store.eventstore import EventStore
from synthledger.store.lite import LiteEngine
from synthledger.store.sql import text


@pytest.fixture
def store(tmp_path):
    st = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    yield st
    st.close()


def test_a_plain_sqlite_url_opens_without_sqlalchemy_and_others_through_it(tmp_path):
    code = ("import sys; from synthledger.store.eventstore import EventStore\n"
            f"s = EventStore('sqlite:///{tmp_path / 'a.db'}'); s.start_run('r', {{}}, 'h'); print(s.list_runs()[0].name)\n"
            "print('sqlalchemy' in sys.modules)\n"
            f"EventStore('sqlite+pysqlite:///{tmp_path / 'a.db'}').close(); print('sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["r", "False", "True"]


def test_driver_errors_are_sqlalchemys_exceptions_with_the_drivers_error_inside(store):
    assert isinstance(store.engine, LiteEngine)
    with pytest.raises(sqlalchemy.exc.OperationalError) as err, store.engine.connect() as conn:
        conn.execute(text("SELECT x FROM nowhere"))
    assert "no such table: nowhere" in str(err.value.orig)
    store.start_run("r", {}, "h", run_id="abc")
    with pytest.raises(sqlalchemy.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(text("INSERT INTO runs (id, name, kind, created, config, config_hash, status, last_seq, "
                          "head_hash) VALUES ('abc', 'x', 'k', 0, '{}', 'h', 's', 0, 'g')"))


def test_rows_read_by_position_name_and_mapping_and_a_failed_block_rolls_back(store):
    store.start_run("first", {}, "h", run_id="r1")
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT id, name FROM runs WHERE id = :id"), {"id": "r1"}).first()
    assert row == ("r1", "first") and row.name == "first" and row._mapping == {"id": "r1", "name": "first"}
    with pytest.raises(RuntimeError), store.engine.begin() as conn:
        conn.execute(text("UPDATE runs SET name = 'renamed' WHERE id = 'r1'"))
        raise RuntimeError("the block fails after its write")
    assert store.get_run("r1").name == "first"


def test_closing_while_a_connection_is_in_use_folds_the_log_once_it_comes_back(tmp_path):
    path = tmp_path / "s.db"
    store = EventStore(f"sqlite:///{path}")
    store.start_run("r", {}, "h")
    held, release = threading.Event(), threading.Event()

    def reader():
        with store.engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM runs")).first()
            held.set()
            release.wait(10)

    t = threading.Thread(target=reader)
    t.start()
    held.wait(10)
    store.close()
    assert (tmp_path / "s.db-wal").exists()  # the reader's connection is still open
    release.set()
    t.join(10)
    assert not (tmp_path / "s.db-wal").exists()  # closed on its return: the last one folds the log
