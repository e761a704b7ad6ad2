"""Schema migrations, recorded in `schema_migrations` so a store knows what shape it is in.

Append a new (version, name, function) to MIGRATIONS to change the schema; never edit a shipped one.
Many processes may open a new store at once (several `generate` runs, Ray workers): on PostgreSQL
an advisory lock, on SQLite the write lock, makes one of them migrate while the others wait and
then find the work done.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from . import schema_v1_sqlite
from .keys import create_event_keys
from .sql import has_table, text
from .views import create_views

if TYPE_CHECKING:
    from sqlalchemy import Connection

PG_MIGRATION_LOCK = 0x5E1D1ED6  # any constant: the key of the advisory lock migrations take


def _initial(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":  # (a SQLite file's own connection has no SQLAlchemy Core)
        for ddl in schema_v1_sqlite.RUNS_AND_EVENTS:
            conn.exec_driver_sql(ddl)
    else:
        from . import schema_v1

        schema_v1.metadata.create_all(conn, tables=[schema_v1.runs, schema_v1.events])
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_events_type ON events (run_id, type)"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial: runs, events", _initial),
    (2, "views: samples, charges, queries, spend_by_run", create_views),
    (3, "event_keys: settled queries by id, for answers reused across runs", create_event_keys),
]
LATEST = MIGRATIONS[-1][0]


class StoreTooNew(RuntimeError):
    pass


def _applied(conn: Connection) -> set[int]:
    if not has_table(conn, "schema_migrations"):
        return set()
    return {row[0] for row in conn.execute(text("SELECT version FROM schema_migrations"))}


def _check_not_newer(applied: set[int]) -> None:
    if applied and max(applied) > LATEST:
        raise StoreTooNew(
            f"store schema version {max(applied)} is newer than this synthledger understands ({LATEST})"
        )


def migrate(engine: Any) -> int:
    """Bring the schema to LATEST; returns the version. Refuses a store from a newer release."""
    with engine.connect() as conn:  # the common case, an up-to-date store, takes no lock at all
        applied = _applied(conn)
    _check_not_newer(applied)
    if all(v in applied for v, _, _ in MIGRATIONS):
        return LATEST
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: read, decide and write under it
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(schema_v1_sqlite.SCHEMA_MIGRATIONS)
        else:
            from . import schema_v1

            schema_v1.schema_migrations.create(conn, checkfirst=True)
        applied = _applied(conn)  # again, under the lock: another process may have just migrated
        _check_not_newer(applied)
        for version, name, fn in MIGRATIONS:
            if version in applied:
                continue
            fn(conn)
            conn.execute(
                text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
                {"v": version, "n": name, "t": time.time()},
            )
    return LATEST
