"""A SQLite store file opened with the standard library's `sqlite3`, behind the few parts of
SQLAlchemy's engine API the store uses.

Why: importing SQLAlchemy takes about half a second on a slow machine, more than half of what a
command costs before it does anything, and the default store (a SQLite file) needs none of it.
Every command, and every paced run's first slot, paid it. Other URLs (PostgreSQL, a database in
memory, a URL naming its own driver or options) still open through SQLAlchemy.

What it keeps identical to SQLAlchemy with its `pysqlite` dialect:
- transactions: the driver's own (it begins one before the first INSERT/UPDATE/DELETE), so
  `begin()` commits at the end and `connect()` rolls back what it left open, and an explicit
  `BEGIN IMMEDIATE` as a block's first statement takes the write lock up front;
- errors: a `sqlite3.Error` is raised as the SQLAlchemy exception SQLAlchemy itself would raise
  (`DBAPIError.instance`, imported only then), so every `except` written for SQLAlchemy holds;
- named parameters (`:name`), the statements `store.sql.text` builds, or SQLAlchemy `text()`.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

MAX_IDLE = 5  # connections kept open between uses (SQLAlchemy's default pool size)


class LiteDialect:
    name = "sqlite"
    driver = "pysqlite"
    paramstyle = "qmark"
    loaded_dbapi = sqlite3


def translated(exc: sqlite3.Error, statement: str | None, params: Any) -> Exception:
    """The SQLAlchemy exception for a driver error, as SQLAlchemy would have raised it."""
    from sqlalchemy.exc import DBAPIError

    return DBAPIError.instance(statement, params, exc, sqlite3.Error)


class LiteRow(tuple):
    """A row that reads like SQLAlchemy's: by position, by column name, or as `_mapping`."""

    def __new__(cls, values: tuple, names: tuple[str, ...]) -> "LiteRow":
        row = super().__new__(cls, values)
        row._names = names
        return row

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._names, self))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._names.index(name)]
        except (ValueError, AttributeError):
            raise AttributeError(name) from None


class LiteResult:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor
        self.rowcount = cursor.rowcount

    def _rows(self, rows: list[tuple]) -> list[LiteRow]:
        names = tuple(d[0] for d in self._cursor.description or ())
        return [LiteRow(r, names) for r in rows]

    def first(self) -> LiteRow | None:
        try:
            row = self._cursor.fetchone()
        except sqlite3.Error as exc:
            raise translated(exc, None, None) from exc
        rows = self._rows([row]) if row is not None else [None]
        self._cursor.close()
        return rows[0]

    def all(self) -> list[LiteRow]:
        try:
            return self._rows(self._cursor.fetchall())
        except sqlite3.Error as exc:
            raise translated(exc, None, None) from exc

    fetchall = all

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]

    def __iter__(self) -> Iterator[LiteRow]:
        return iter(self.all())


class _Fairy:
    """What `connection.connection` is in SQLAlchemy: the pooled driver connection."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.dbapi_connection = self.driver_connection = raw


class LiteConnection:
    dialect = LiteDialect

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw
        self.connection = _Fairy(raw)

    def _run(self, statement: str, params: Any) -> LiteResult:
        try:
            if isinstance(params, list):
                cursor = self.raw.executemany(statement, params)
            else:
                cursor = self.raw.execute(statement, params if params is not None else ())
        except sqlite3.Error as exc:
            raise translated(exc, statement, params) from exc
        return LiteResult(cursor)

    def execute(self, statement: Any, params: Any = None) -> LiteResult:
        """`statement`: SQL with `:name` parameters, as a string or a SQLAlchemy `text()`."""
        return self._run(statement if isinstance(statement, str) else statement.text, params)

    def exec_driver_sql(self, statement: str, params: Any = None) -> LiteResult:
        return self._run(statement, params)

    def commit(self) -> None:
        try:
            self.raw.commit()
        except sqlite3.Error as exc:
            raise translated(exc, "COMMIT", None) from exc

    def rollback(self) -> None:
        try:
            self.raw.rollback()
        except sqlite3.Error as exc:
            raise translated(exc, "ROLLBACK", None) from exc


class LiteEngine:
    """Connections to one SQLite file: opened by `opener`, prepared by `on_connect(raw)`, kept
    for reuse by any thread (one at a time, as SQLAlchemy's pool does).

    `dispose()` closes the idle ones, and one in use is closed when it comes back: the last
    connection to a file to close folds its write-ahead log into it (see `_close_open_stores`)."""

    dialect = LiteDialect

    def __init__(self, opener: Callable[[], sqlite3.Connection], on_connect: Callable[[Any], None]) -> None:
        self._opener = opener
        self._on_connect = on_connect
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._generation = 0  # moves on at each dispose(): older connections are closed on return

    def _checkout(self) -> tuple[sqlite3.Connection, int]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), self._generation
            generation = self._generation
        try:
            raw = self._opener()
            self._on_connect(raw)
        except sqlite3.Error as exc:
            raise translated(exc, None, None) from exc
        return raw, generation

    def _checkin(self, raw: sqlite3.Connection, generation: int) -> None:
        try:
            raw.rollback()  # what a block left open is not kept (SQLAlchemy's reset on return)
        except sqlite3.Error:
            raw.close()
            return
        with self._lock:
            if generation == self._generation and len(self._idle) < MAX_IDLE:
                self._idle.append(raw)
                return
        raw.close()

    @contextmanager
    def connect(self) -> Iterator[LiteConnection]:
        raw, generation = self._checkout()
        try:
            yield LiteConnection(raw)
        finally:
            self._checkin(raw, generation)

    @contextmanager
    def begin(self) -> Iterator[LiteConnection]:
        raw, generation = self._checkout()
        conn = LiteConnection(raw)
        try:
            yield conn
        except BaseException:
            try:
                raw.rollback()
            except sqlite3.Error:
                pass  # (the block's own error is the one to tell; the checkin closes this connection)
            finally:
                self._checkin(raw, generation)
            raise
        try:
            conn.commit()
        finally:
            self._checkin(raw, generation)

    def dispose(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for raw in idle:
            raw.close()
