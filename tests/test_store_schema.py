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
