"""Migration 1's frozen tables are exactly what the sqlmodel models declare (until a later migration
changes the models), in both dialects; and opening a store does not load the ORM."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from synthledger.store import schema_v1
from synthledger.store.models import EventRow, MigrationRow, RunRow

PAIRS = [(RunRow, schema_v1.runs), (EventRow, schema_v1.events), (MigrationRow, schema_v1.schema_migrations)]


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "postgresql"])
@pytest.mark.parametrize("model,table", PAIRS, ids=[t.name for _, t in PAIRS])
def test_frozen_tables_match_the_models(model, table, dialect):
    declared = model.__table__
    assert str(CreateTable(table).compile(dialect=dialect)) == str(CreateTable(declared).compile(dialect=dialect))

    def indexes(t):
        return sorted(str(CreateIndex(ix).compile(dialect=dialect)) for ix in t.indexes)

    assert indexes(table) == indexes(declared)


def test_creating_and_opening_a_store_does_not_import_the_orm(tmp_path):
    code = ("import sys; from synthledger.store.eventstore import EventStore\n"
            f"EventStore('sqlite:///{tmp_path / 's.db'}').close(); EventStore('sqlite:///{tmp_path / 's.db'}').close()\n"
            "print(sorted(m for m in ('sqlmodel', 'sqlalchemy.orm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_sqlite_ddl_written_out_is_what_the_frozen_tables_compile_to():
    from synthledger.store import schema_v1_sqlite as ddl

    dialect = sqlite.dialect()

    def written(sql: str) -> str:
        return sql.replace(" IF NOT EXISTS", "", 1)

    assert written(ddl.RUNS) == str(CreateTable(schema_v1.runs).compile(dialect=dialect)).strip()
    assert written(ddl.EVENTS) == str(CreateTable(schema_v1.events).compile(dialect=dialect)).strip()
    assert written(ddl.SCHEMA_MIGRATIONS) == str(CreateTable(schema_v1.schema_migrations).compile(dialect=dialect)).strip()
    assert [written(ddl.RUNS_NAME_INDEX)] == [str(CreateIndex(ix).compile(dialect=dialect)) for ix in schema_v1.runs.indexes]


def test_a_store_file_made_without_sqlalchemy_has_the_schema_sqlalchemy_makes(tmp_path):
    """The default store (a SQLite file) opens without SQLAlchemy, which costs half a second of every
    command's start; a database in memory is created by SQLAlchemy Core. Both end up the same."""
    code = ("import sys; from synthledger.store.eventstore import EventStore\n"
            f"EventStore('sqlite:///{tmp_path / 'lite.db'}').close()\n"
            "print('sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    from synthledger.store.eventstore import EventStore

    core = EventStore(f"sqlite+pysqlite:///{tmp_path / 'core.db'}")
    core.close()
    import sqlite3

    def schema(path):
        with sqlite3.connect(path) as con:
            return sorted(r for r in con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                                 "WHERE name <> 'sqlite_sequence'"))

    lite, made_by_core = schema(tmp_path / "lite.db"), schema(tmp_path / "core.db")
    norm = [(t, n, tb, (s or "").replace(" IF NOT EXISTS", "")) for t, n, tb, s in lite]
    assert norm == [(t, n, tb, (s or "").replace(" IF NOT EXISTS", "")) for t, n, tb, s in made_by_core]
    assert {n for _, n, _, _ in lite} >= {"runs", "events", "schema_migrations", "event_keys", "samples"}
