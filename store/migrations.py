"""Schema migrations, recorded in `schema_migrations` so a store knows what shape it is in.

Append a new (version, name, function) to MIGRATIONS to change the schema; never edit a shipped one.
"""

from __future__ import annotations

import time
from typing import Callable

from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from .models import EventRow, MigrationRow, RunRow


def _initial(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn, tables=[RunRow.__table__, EventRow.__table__])
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_events_type ON events (run_id, type)"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial: runs, events", _initial),
]
LATEST = MIGRATIONS[-1][0]


class StoreTooNew(RuntimeError):
    pass


def migrate(engine: Engine) -> int:
    """Bring the schema to LATEST; returns the version. Refuses a store from a newer release."""
    with engine.begin() as conn:
        MigrationRow.__table__.create(conn, checkfirst=True)
        applied = {row[0] for row in conn.execute(text("SELECT version FROM schema_migrations"))}
        if applied and max(applied) > LATEST:
            raise StoreTooNew(
                f"store schema version {max(applied)} is newer than this synthledger understands ({LATEST})"
            )
        if not applied and inspect(conn).has_table("events"):
            applied = set()  # pre-migration table: treat as needing the initial migration (idempotent)
        for version, name, fn in MIGRATIONS:
            if version in applied:
                continue
            fn(conn)
            conn.execute(
                text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
                {"v": version, "n": name, "t": time.time()},
            )
    return LATEST
