"""SQLAlchemy's database exceptions, for `except` clauses, without importing SQLAlchemy.

Write `except dberrors.DatabaseError:` (the attribute, read when an exception is being matched),
never `from .dberrors import DatabaseError`. Until SQLAlchemy is loaded no exception of its can
exist: a SQLite file's own connection (`store/lite.py`) loads it to raise one. So before then each
name stands for a class nothing raises, and matching a store's unrelated error (a run not found, a
Ctrl-C) costs no import of half a second."""

from __future__ import annotations

import sys
from typing import Any


class _NeverRaised(Exception):
    """What an SQLAlchemy exception class is matched against before SQLAlchemy is loaded."""


def __getattr__(name: str) -> Any:
    exc = sys.modules.get("sqlalchemy.exc")
    if exc is None:
        if name.startswith("__"):
            raise AttributeError(name)
        return _NeverRaised
    return getattr(exc, name)
