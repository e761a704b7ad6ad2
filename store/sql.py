"""SQL the store sends to either kind of connection: SQLAlchemy's, or a SQLite file's own
(`store/lite.py`), without importing SQLAlchemy where nothing else has."""

from __future__ import annotations

import sys
from typing import Any


def text(sql: str) -> Any:
    """A statement with `:name` parameters: SQLAlchemy's `text()` once SQLAlchemy is loaded (an
    engine of its own needs it), the string itself before that (only a SQLite file's connection
    can exist then, and it takes either)."""
    sa = sys.modules.get("sqlalchemy")
    return sa.text(sql) if sa is not None and hasattr(sa, "text") else sql


def has_table(conn: Any, name: str) -> bool:
    if conn.dialect.name == "sqlite":
        found = conn.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :n"),
                             {"n": name}).first()
        return found is not None
    from sqlalchemy import inspect

    return inspect(conn).has_table(name)
