"""Opening a store's database: the engine each backend needs (a SQLite file's own, `lite.py`, or
SQLAlchemy's), and the SQL we send straight to the driver (positional parameters in its own style)
where SQLAlchemy's per-row work would cost more than the database's own."""

from __future__ import annotations

import os
import socket
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any, Iterator

from .errors import StoreError, StoreMissing
from .folders import make_parent
from .lite import LiteEngine
from .records import EVENT_COLUMNS
from .urls import check_driver, sqlite_file


# SQLite's busy timeout and PostgreSQL's lock_timeout are 32-bit milliseconds: a larger value was
# read as none at all (a store locked for a moment then failed at once).
MAX_WAIT_MS = 2**31 - 1


# SQLite's page cache per connection, in KiB (its default is 2000). The writer appends at the right
# edge of its indexes, and reads stream pages in order: a bigger cache bought no speed
# (benchmarks/throughput.py, scenario c) but filled as the store grew, a third of a 50,000-query
# run's memory growth. The operating system's file cache still holds what was read.
PAGE_CACHE_KIB = 512


def wait_ms(seconds: float) -> int:
    return MAX_WAIT_MS if seconds * 1000 >= MAX_WAIT_MS else int(seconds * 1000)


def _sqlite_pragmas(timeout_ms: int, read_only: bool, dbapi_conn: Any, _record: Any = None) -> None:
    cur = dbapi_conn.cursor()
    # First: switching a store to WAL needs its lock too, and waited only the driver's 5 s for it.
    cur.execute(f"PRAGMA busy_timeout={timeout_ms}")
    if not read_only:  # setting the journal mode is a write: a read-only store keeps the one it has
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # durable at every commit; batching keeps that cheap
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
    cur.close()


def sqlite_path(url: str, must_exist: bool = False) -> str | None:
    """The file behind a sqlite URL (None in memory); refuses a directory, creates the folder
    unless `must_exist` (a read-only command must not conjure a store at a mistyped path)."""
    path = sqlite_file(url)
    if path is None:
        return None
    p = Path(path)
    if p.exists() and p.is_dir():
        raise StoreError(f"store path {p} is a directory, not a database file")
    if must_exist and not p.exists():
        raise StoreMissing(f"store {p} does not exist")
    reason = make_parent(p)
    if reason is not None:
        raise StoreError(f"cannot create store {p}: {reason}")
    return str(p)


def unwritable(path: str) -> str | None:
    """Why the SQLite store at `path` cannot be written (its file, or the folder it is or would be
    created in, with the OS's reason), or None when it can."""
    p = Path(path)
    for target, what in ((p, "its file"), (p.parent, f"its folder {p.parent}")):
        if not target.exists():
            continue
        if os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
            continue
        try:
            ro = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        except OSError:
            ro = False
        return f"{what} cannot be written ({'read-only file system' if ro else 'permission denied'})"
    return None


def _read_only_connection(path: str) -> Any:
    """A connection that never writes, for reading a store whose file or folder cannot be written
    (an archived or shared copy, a read-only mount).

    SQLite reads a WAL-mode database read-only through its `-shm` index; where that file is missing
    and cannot be created the database is opened as immutable, which is exact only when no write-ahead
    log holds events the database file lacks: with one, refusing is the only honest answer."""
    from urllib.parse import quote

    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    con = sqlite3.connect(uri, uri=True, check_same_thread=False)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchall()  # opening is lazy: open it now
        return con
    except sqlite3.OperationalError:
        con.close()
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise sqlite3.OperationalError(
            f"its write-ahead log {wal} holds events not yet in the database file, which SQLite reads only where "
            "it can write the log's index: open the store once where it can be written (any command folds the log "
            "in), or copy it with its -wal file to a folder that can be written")
    return sqlite3.connect(f"{uri}&immutable=1", uri=True, check_same_thread=False)


def _plain_sqlite_file(url: str, db_file: str | None) -> bool:
    """A SQLite file named without a driver or options (`sqlite:///store.db`, the default): opened
    without SQLAlchemy. `sqlite+pysqlite:///...` or a query string goes through SQLAlchemy as written."""
    return db_file is not None and url.startswith("sqlite:///") and "?" not in url


def open_engine(url: str, where: str, busy_timeout_s: float, db_file: str | None,
                read_only: bool = False) -> Any:
    """The engine for `url`; `read_only` (a SQLite file only) opens connections that never write."""
    timeout_ms = wait_ms(busy_timeout_s)
    if _plain_sqlite_file(url, db_file):
        assert db_file is not None
        opener = (partial(_read_only_connection, db_file) if read_only
                  else partial(sqlite3.connect, db_file, check_same_thread=False))
        return LiteEngine(opener, partial(_sqlite_pragmas, timeout_ms, read_only, _record=None))
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import StaticPool

    kwargs: dict[str, Any] = {}
    if read_only and db_file is not None:
        kwargs = {"creator": partial(_read_only_connection, db_file)}  # the URL still picks the dialect, pool
    elif url.startswith("sqlite") and db_file is None:
        # An in-memory database lives in one connection: share it with every thread (the recorder
        # commits from a worker thread), or each thread would see an empty store.
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    elif url.startswith("postgresql"):
        check_driver(url)
        # Sessions say whose they are (pg_stat_activity), and a lock is waited for as long as a busy
        # SQLite file would be, not forever.
        app = f"synthledger {socket.gethostname()}:{os.getpid()}"[:63]
        options = f"-c lock_timeout={timeout_ms}"
        given = make_url(url).query.get("options")  # the URL's own server options come first
        options = f"{given if isinstance(given, str) else ' '.join(given)} {options}" if given else options
        kwargs = {"connect_args": {"application_name": app, "options": options}}
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:  # bad URL or missing driver
        raise StoreError(f"cannot open store {where}: {one_line(exc)}") from exc
    if url.startswith("sqlite"):
        event.listen(engine, "connect", partial(_sqlite_pragmas, timeout_ms, read_only))
    return engine


def one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _mark(paramstyle: str, i: int) -> str:
    """The i-th (1-based) positional parameter in the driver's own style."""
    if paramstyle == "numeric":
        return f":{i}"
    if paramstyle == "numeric_dollar":
        return f"${i}"
    return _PLACEHOLDERS.get(paramstyle, "?")


def insert_sql(paramstyle: str) -> str:
    """The events INSERT in the driver's own positional parameter style."""
    marks = [_mark(paramstyle, i) for i in range(1, 8)]
    return f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({', '.join(marks)})"


def page_sql(paramstyle: str, n_types: int) -> str:
    """One page of a run's events, a range of sequence numbers: (run_id, after, upto, *types).

    A range, not `seq > after ... LIMIT n`: on PostgreSQL with stale statistics (a run just written)
    the LIMIT form was planned as a bitmap scan of the whole rest of the run plus a sort spilled to
    disk, for every page, so reading a run took time quadratic in its length."""
    m = [_mark(paramstyle, i) for i in range(1, n_types + 4)]
    types = f" AND type IN ({', '.join(m[3:3 + n_types])})" if n_types else ""
    return (f"SELECT seq, type, schema_version, payload, ts, hash FROM events WHERE run_id = {m[0]} "
            f"AND seq > {m[1]} AND seq <= {m[2]}{types} ORDER BY seq")


def next_match_sql(paramstyle: str, n_types: int) -> str:
    """The first event after a point that has one of the types: (run_id, after, *types). A filtered
    read jumps over ranges with none, so a rare type costs a few queries, not one per range."""
    m = [_mark(paramstyle, i) for i in range(1, n_types + 3)]
    return (f"SELECT min(seq) FROM events WHERE run_id = {m[0]} AND seq > {m[1]} "
            f"AND type IN ({', '.join(m[2:])})")


def max_seq_sql(paramstyle: str) -> str:
    """Where a run's log ends now: (run_id,)."""
    return f"SELECT max(seq) FROM events WHERE run_id = {_mark(paramstyle, 1)}"


_END = object()


def read_ahead(items: Iterator[Any]) -> Iterator[Any]:
    """What `items` yields, the next one produced in a worker thread while the caller uses this
    one. `items` is only ever advanced by one thread at a time; an error it raises is raised here."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthledger-read") as pool:
        future = pool.submit(next, items, _END)
        while True:
            item = future.result()
            if item is _END:
                return
            future = pool.submit(next, items, _END)
            yield item
