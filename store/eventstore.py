"""The append-only event store, on SQLite (the embedded default) or PostgreSQL (a store a team or
a grid of machines shares).

Appends are batched (one transaction, one fsync, many events) and guarded twice: the caller states
the sequence number it expects to extend (optimistic concurrency) and, for runs held by a process,
the lease token it owns. Both guards are one conditional UPDATE of the run's row in the append's
own transaction, so the database enforces them for writers on any host. Reads stream in
keyset-paginated pages so replaying a million events takes constant memory. Every database error
leaves as a StoreError of one line naming the store (never its password); a lock held past the
busy timeout as StoreBusy, naming the holder where it can be told.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import time
import uuid
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import orjson

from . import dberrors
from .busy import busy_error, is_busy, pg_holders, sqlite_holders
from .engines import (insert_sql, max_seq_sql, next_match_sql, one_line, open_engine, page_sql, read_ahead,
                      sqlite_path, unwritable, wait_ms)
from .errors import ConcurrencyError, NameTaken, RunMovedOn, RunNotFound, StoreBusy, StoreError, StoreMissing
from .hashing import GENESIS, canonical
from .keys import KeyIndex
from .migrations import migrate
from .records import (EVENT_COLUMNS, NewEvent, RunInfo, StoredEvent, owner_alive, chain_rows, iso_ms,
                      owner_token)
from .sql import has_table, text
from .urls import DEFAULT_DIR, ENV_STORE, busy_timeout_s, default_url, display, resolve_url, userinfo_problem

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["DEFAULT_DIR", "ENV_STORE", "ConcurrencyError", "EventStore", "NewEvent", "RunInfo", "RunNotFound",
           "StoreBusy", "StoreError", "StoreMissing", "StoredEvent", "default_url", "iso_ms", "new_run_id",
           "owner_token", "resolve_url"]

PAGE = 5000
_OPEN: "weakref.WeakSet[EventStore]" = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    """Close what a command left open, at exit: an SQLite store's last connection to close folds
    its write-ahead log back into the database file, so the file alone holds every event (a copy
    of it, a backup) even when the CLI skips the interpreter's teardown."""
    for store in list(_OPEN):
        try:
            store.close()
        except Exception:  # exiting anyway; the log itself is durable
            pass


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class EventStore(KeyIndex):
    def __init__(self, url: str | None = None, *, busy_timeout: float | None = None,
                 must_exist: bool = False) -> None:
        """Open (and migrate) the store at `url`. With `must_exist`, a store that is not there is an
        error instead of being created: only starting a run may create one, so a read-only command
        pointed at a mistyped path says so instead of leaving an empty database behind."""
        self.url = resolve_url(url)
        self.must_exist = must_exist
        self.where = display(self.url)  # what messages show: never a password
        problem = userinfo_problem(self.url)
        if problem is not None:
            raise StoreError(f"cannot open store {self.where}: {problem}")
        self.busy_timeout_s = busy_timeout_s() if busy_timeout is None else busy_timeout
        self._sqlite_path: str | None = None
        self.read_only = False  # a SQLite store opened for reading only: its file or folder cannot be written
        self._why_read_only = ""
        self.engine = self._open()
        self.dialect = self.engine.dialect.name
        _OPEN.add(self)

    def _open(self) -> Any:
        if self.url.startswith("sqlite"):
            self._sqlite_path = sqlite_path(self.url, self.must_exist)
            self.where = self._sqlite_path or self.where
            if self._sqlite_path and (self.must_exist or os.path.exists(self._sqlite_path)):
                self._refuse_a_foreign_file(self._sqlite_path, empty_ok=not self.must_exist)
        self.engine = engine = open_engine(self.url, self.where, self.busy_timeout_s, self._sqlite_path)
        if self.must_exist and not self.url.startswith("sqlite"):
            self._require_schema()
        try:
            migrate(engine)
        except dberrors.DatabaseError as exc:
            if is_busy(exc):
                raise self._busy() from None
            why = unwritable(self._sqlite_path) if self._sqlite_path else None
            if why is None:
                raise StoreError(f"cannot open store {self.where}: {one_line(exc)}") from exc
            engine.dispose()
            if not self.must_exist:  # a command that writes (and may create): say why it cannot
                verb = "write to" if Path(self._sqlite_path).exists() else "create"
                raise StoreError(f"cannot {verb} store {self.where}: {why} ({one_line(exc)})") from None
            return self._open_read_only(why)
        except Exception as exc:
            raise StoreError(f"cannot open store {self.where}: {exc}") from exc
        return engine

    def _open_read_only(self, why: str) -> Any:
        """The store cannot be written here (an archive, a shared copy, a read-only mount): open it
        for reading, which is all a command that must find an existing store mostly needs; a write
        then fails naming the store and why."""
        self.read_only, self._why_read_only = True, why
        self.engine = engine = open_engine(self.url, self.where, self.busy_timeout_s, self._sqlite_path,
                                           read_only=True)
        try:
            migrate(engine)  # an up-to-date store only reads here
        except dberrors.DatabaseError as exc:
            engine.dispose()
            raise StoreError(f"cannot open store {self.where}: {why}, and it cannot be read either: "
                             f"{one_line(exc)}") from exc
        except Exception as exc:
            engine.dispose()
            raise StoreError(f"cannot open store {self.where}: {exc}") from exc
        return engine

    def _refuse_a_foreign_file(self, path: str, empty_ok: bool = False) -> None:
        """Another program's SQLite file is not turned into a store: opening it migrated it (our tables
        added beside its own, the file switched to WAL), by a command that only reads or by `generate`
        and `store copy` alike. An empty database may become one (`empty_ok`) where the command may
        create a store. Looked at read-only, before anything writes; a file SQLite cannot read is left
        to the open."""
        import sqlite3
        from urllib.parse import quote

        try:
            con = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True,
                                  timeout=wait_ms(self.busy_timeout_s) / 1000)
            try:
                tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            finally:
                con.close()
        except sqlite3.Error:
            return
        if not tables and not empty_ok:  # (QA: what a store's creation on a full disk leaves, called "not a store")
            raise StoreMissing(f"store {path} holds nothing yet (an empty database: no run was ever recorded in it; "
                               "one whose creation failed, on a full disk say, is left so, and `generate` may use it)")
        if "schema_migrations" not in tables and tables:
            raise StoreError(f"{path} is not a synthledger store: it holds other tables ({', '.join(tables[:5])}); "
                             "nothing was written to it")

    def _require_schema(self) -> None:
        """A server database counts as a store once it holds our tables; an empty one is not created here."""
        try:
            with self.engine.connect() as conn:
                present = has_table(conn, "runs")
        except Exception as exc:
            raise StoreError(f"cannot open store {self.where}: {one_line(exc)}") from exc
        if not present:
            raise StoreMissing(f"store {self.where} does not exist (the database holds no synthledger tables)")

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite file this store is, or None (a server database, or one in memory)."""
        return self._sqlite_path

    def close(self) -> None:
        self.engine.dispose()

    # ---- connections: every database error becomes one line naming the store ---------------
    def _busy(self) -> StoreBusy:
        holders = sqlite_holders(self._sqlite_path) if self._sqlite_path else (
            pg_holders(self.engine) if self.url.startswith("postgresql") else [])
        return busy_error(self.where, self.busy_timeout_s, holders)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except dberrors.IntegrityError:
            raise
        except dberrors.DatabaseError as exc:
            if is_busy(exc):
                raise self._busy() from None
            if self.read_only and "readonly" in one_line(exc).lower():
                raise StoreError(f"store {self.where} can only be read here, {self._why_read_only}: "
                                 f"{one_line(exc)}") from exc
            raise StoreError(f"store {self.where}: {one_line(exc)}") from exc

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._translated(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        with self._translated(), self.engine.connect() as conn:
            yield conn

    # ---- runs -------------------------------------------------------------------------
    def start_run(self, name: str, config: dict[str, Any], config_hash: str, events: Sequence[NewEvent] = (),
                  *, kind: str = "generate", parent_id: str | None = None,
                  owner: str | None = None, run_id: str | None = None,
                  unique_name: bool = False) -> tuple[str, int, str]:
        """Create a run and append its first events in one transaction: (run id, last seq, head hash).

        A run therefore exists with its `run_started` or not at all: a process killed at any instant
        leaves nothing a resume cannot read. `run_id` (from `new_run_id()`) when the run's name or
        files must carry its id. `unique_name`: NameTaken if a run of this name holds events, decided
        under the lock the insert takes, so two processes starting one name at once make one run."""
        run_id = run_id or new_run_id()
        now = time.time()
        rows, last, head = chain_rows(run_id, events, 0, GENESIS, now)
        try:
            self._insert_run(run_id, name, config, config_hash, kind, parent_id, owner, now, last, head, rows,
                             events, unique_name)
        except dberrors.IntegrityError as exc:
            raise StoreError(f"cannot create run {name!r} in {self.where}: {one_line(exc)}") from exc
        return run_id, last, head

    def _insert_run(self, run_id: str, name: str, config: dict[str, Any], config_hash: str, kind: str,
                    parent_id: str | None, owner: str | None, now: float, last: int, head: str,
                    rows: list[tuple[Any, ...]], events: Sequence[NewEvent] = (), unique_name: bool = False) -> None:
        with self._begin() as conn:
            if unique_name:
                self._lock_name(conn, name)
                held = conn.execute(text("SELECT id FROM runs WHERE name = :n AND last_seq > 0"), {"n": name}).first()
                if held is not None:
                    raise NameTaken(f"run name {name!r} is taken by run {held[0]} in {self.where}")
            conn.execute(
                text("INSERT INTO runs (id, name, kind, parent_id, created, config, config_hash, status,"
                     " last_seq, head_hash, owner, heartbeat) VALUES (:id, :name, :kind, :parent, :created,"
                     " :config, :hash, 'running', :last, :head, :owner, :hb)"),
                {"id": run_id, "name": name, "kind": kind, "parent": parent_id, "created": now,
                 "config": canonical(config).decode(), "hash": config_hash, "last": last, "head": head,
                 "owner": owner, "hb": now if owner else None},
            )
            if rows:
                self._insert_events(conn, rows)
                self._insert_keys(conn, run_id, 0, events, now)

    @staticmethod
    def _lock_name(conn: Connection, name: str) -> None:
        """Serialise the starts of runs of one name, for the rest of this transaction. A caller's own
        look for the name came before, outside any lock: two processes can both find it free. On
        SQLite the write lock is taken first (as migrations do); on PostgreSQL, where inserts do not
        block each other, an advisory lock keyed by the name."""
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.blake2b(f"run-name:{name}".encode(), digest_size=8).digest(), "big",
                                 signed=True)
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    def create_run(self, name: str, config: dict[str, Any], config_hash: str, *, kind: str = "generate",
                   parent_id: str | None = None, owner: str | None = None) -> str:
        """A run with no events yet (tests, tools); the engine starts runs with `start_run`."""
        return self.start_run(name, config, config_hash, kind=kind, parent_id=parent_id, owner=owner)[0]

    def _row_to_info(self, row: Any) -> RunInfo:
        m = row._mapping
        return RunInfo(id=m["id"], name=m["name"], kind=m["kind"], parent_id=m["parent_id"],
                       created=m["created"], config=orjson.loads(m["config"]), config_hash=m["config_hash"],
                       status=m["status"], last_seq=m["last_seq"], head_hash=m["head_hash"],
                       owner=m["owner"], heartbeat=m["heartbeat"])

    def get_run(self, run_id: str) -> RunInfo:
        with self._connect() as conn:
            row = conn.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": run_id}).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.where}")
        return self._row_to_info(row)

    def list_runs(self, *, name: str | None = None, kind: str | None = None) -> list[RunInfo]:
        q = "SELECT * FROM runs WHERE 1=1"
        params: dict[str, Any] = {}
        if name is not None:
            q += " AND name = :name"
            params["name"] = name
        if kind is not None:
            q += " AND kind = :kind"
            params["kind"] = kind
        q += " ORDER BY created"
        with self._connect() as conn:
            return [self._row_to_info(r) for r in conn.execute(text(q), params)]

    def resolve(self, ref: str) -> RunInfo:
        """A run id, a unique id prefix, or a unique run name."""
        with self._connect() as conn:
            row = conn.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": ref}).first()
            if row is not None:
                return self._row_to_info(row)
            rows = conn.execute(text("SELECT * FROM runs WHERE name = :n ORDER BY created"), {"n": ref}).all()
            if not rows and ref:  # a prefix compared as text: `_` and `%` in LIKE matched other runs
                rows = conn.execute(text("SELECT * FROM runs WHERE substr(id, 1, :n) = :p ORDER BY created"),
                                    {"n": len(ref), "p": ref}).all()
        if not rows:
            raise RunNotFound(f"no run with id or name {ref!r} in {self.where}")
        if len(rows) > 1:
            ids = ", ".join(r._mapping["id"] for r in rows)
            raise StoreError(f"{ref!r} names {len(rows)} runs ({ids}); pass a run id")
        return self._row_to_info(rows[0])

    def log_end(self, run_id: str) -> tuple[int, int]:
        """(last seq the run row recorded, highest seq actually stored), read in one statement: an
        honest store always has them equal, since append commits both in one transaction."""
        with self._connect() as conn:
            row = conn.execute(text("SELECT r.last_seq, (SELECT max(e.seq) FROM events e WHERE e.run_id = r.id) "
                                    "FROM runs r WHERE r.id = :id"), {"id": run_id}).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.where}")
        return int(row[0]), int(row[1] or 0)

    def set_status(self, run_id: str, status: str) -> None:
        with self._begin() as conn:
            conn.execute(text("UPDATE runs SET status = :s WHERE id = :id"), {"s": status, "id": run_id})

    # ---- lease: one process extends a run ---------------------------------------------
    def acquire(self, run_id: str, owner: str, ttl_s: float = 30.0, at_seq: int | None = None) -> None:
        """Take the run's lease, or fail at once naming the holder. A holder is gone when its heartbeat
        is older than ttl_s, or, on this host, when its process no longer exists. With `at_seq`, only
        while the run's log still ends there (RunMovedOn otherwise): a resume folds the log before it
        takes the lease, and a holder thought gone may have appended since - settlements the resume's
        budget would not know of, and would pay for again."""
        info = self.get_run(run_id)
        now = time.time()
        holder = info.owner
        if holder and holder != owner:
            stale = info.heartbeat is None or now - info.heartbeat > ttl_s or not owner_alive(holder)
            if not stale:
                raise ConcurrencyError(
                    f"run {run_id} is being extended by another process ({holder}); "
                    "wait for it to finish or stop it first")
        same_log = "" if at_seq is None else " AND last_seq = :seq"
        with self._begin() as conn:
            res = conn.execute(
                text("UPDATE runs SET owner = :me, heartbeat = :now WHERE id = :id AND "
                     f"(owner IS NULL OR owner = :old OR owner = :me){same_log}"),
                {"me": owner, "now": now, "id": run_id, "old": holder, "seq": at_seq},
            )
        if res.rowcount != 1:
            if at_seq is not None and self.get_run(run_id).last_seq != at_seq:
                raise RunMovedOn(f"run {run_id} moved on (events were appended) while it was being read")
            raise ConcurrencyError(f"run {run_id} was taken by another process just now")

    def take_from(self, run_id: str, owner: str, gone: str) -> bool:
        """Take the lease of a run from `gone`, a holder known to be dead, only while it still holds it:
        False when another process took it first (two sweeps of a store's orphans at once). Unlike
        `acquire`, never from a live holder."""
        with self._begin() as conn:
            res = conn.execute(text("UPDATE runs SET owner = :me, heartbeat = :now WHERE id = :id AND owner = :gone"),
                               {"me": owner, "now": time.time(), "id": run_id, "gone": gone})
        return res.rowcount == 1

    def heartbeat(self, run_id: str, owner: str) -> None:
        with self._begin() as conn:
            res = conn.execute(text("UPDATE runs SET heartbeat = :now WHERE id = :id AND owner = :me"),
                               {"now": time.time(), "id": run_id, "me": owner})
        if res.rowcount != 1:
            raise ConcurrencyError(f"lost the lease on run {run_id}")

    def release(self, run_id: str, owner: str, status: str | None = None) -> None:
        with self._begin() as conn:
            if status is None:
                conn.execute(text("UPDATE runs SET owner = NULL WHERE id = :id AND owner = :me"),
                             {"id": run_id, "me": owner})
            else:
                conn.execute(text("UPDATE runs SET owner = NULL, status = :s WHERE id = :id AND owner = :me"),
                             {"id": run_id, "me": owner, "s": status})

    # ---- events -----------------------------------------------------------------------
    def append(self, run_id: str, events: Iterable[NewEvent], expected_seq: int, prev_hash: str,
               *, owner: str | None = None, status: str | None = None) -> tuple[int, str]:
        """Append events after `expected_seq` in one transaction. Returns (last_seq, head_hash).

        Fails with ConcurrencyError when the run moved on (or its lease is held by someone else). The
        guard is the database's: a conditional UPDATE of the run row, which a second writer can only
        pass after the first committed (and then finds last_seq moved), plus the (run_id, seq) key."""
        now = time.time()
        events = list(events)
        rows, seq, head = chain_rows(run_id, events, expected_seq, prev_hash, now)
        if not rows:
            return expected_seq, prev_hash
        guard = " AND owner = :me" if owner is not None else " AND owner IS NULL"
        set_status = ", status = :status" if status else ""
        try:
            with self._begin() as conn:
                res = conn.execute(
                    text(f"UPDATE runs SET last_seq = :new, head_hash = :head, heartbeat = :now{set_status} "
                         f"WHERE id = :id AND last_seq = :expected{guard}"),
                    {"new": seq, "head": head, "id": run_id, "expected": expected_seq, "me": owner,
                     "now": now, "status": status},
                )
                if res.rowcount != 1:
                    raise ConcurrencyError(self._conflict_message(conn, run_id, expected_seq, owner))
                self._insert_events(conn, rows)
                self._insert_keys(conn, run_id, expected_seq, events, now)
        except dberrors.IntegrityError as exc:
            raise ConcurrencyError(f"run {run_id}: sequence {expected_seq + 1} already written") from exc
        return seq, head

    def _insert_events(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Straight to the driver: compiling bound parameters per row would cost more than the
        database's own insert work (see benchmarks/eventstore.py). PostgreSQL takes them by COPY."""
        if self.dialect == "postgresql" and self.engine.dialect.driver == "psycopg":
            statement = f"COPY events ({EVENT_COLUMNS}) FROM STDIN"
            dbapi = self.engine.dialect.loaded_dbapi
            try:
                with conn.connection.driver_connection.cursor() as cur, cur.copy(statement) as copy:
                    for row in rows:
                        copy.write_row(row)
            except dbapi.Error as exc:  # as SQLAlchemy would have wrapped it (IntegrityError, ...)
                from sqlalchemy.exc import DBAPIError

                raise DBAPIError.instance(statement, None, exc, dbapi.Error, dialect=self.engine.dialect) from exc
            return
        conn.exec_driver_sql(insert_sql(conn.dialect.paramstyle), rows)

    def _conflict_message(self, conn: Any, run_id: str, expected: int, owner: str | None) -> str:
        row = conn.execute(text("SELECT last_seq, owner FROM runs WHERE id = :id"), {"id": run_id}).first()
        if row is None:
            return f"no run {run_id!r}"
        last, holder = row
        if holder != owner:
            return f"run {run_id} is held by another process ({holder or 'nobody'}); cannot append"
        return f"run {run_id} was extended by another writer (expected last seq {expected}, found {last})"

    def iter_events(self, run_id: str, from_seq: int = 1, *, types: Iterable[str] | None = None,
                    page: int = PAGE) -> Iterator[StoredEvent]:
        """Events in sequence order, streamed `page` sequence numbers at a time, up to the log's end
        (events appended meanwhile included). Pages are read on the driver's own cursor:
        SQLAlchemy's row objects would cost more than the database's work (benchmarks/). On
        PostgreSQL the next page is read while the caller works through this one: the server's
        work then overlaps ours instead of adding to it."""
        pages = self._pages(run_id, from_seq, sorted(set(types)) if types is not None else [], page)
        for rows in read_ahead(pages) if self.dialect == "postgresql" else pages:
            for seq, type_, v, payload, ts, h in rows:
                yield StoredEvent(run_id, seq, type_, v, payload, ts, h)

    def _pages(self, run_id: str, from_seq: int, names: list[str], page: int) -> Iterator[list[tuple[Any, ...]]]:
        style = self.engine.dialect.paramstyle
        sql = page_sql(style, len(names))
        after, last = from_seq - 1, -1
        while True:
            if after >= last:
                last = self._read(run_id, max_seq_sql(style), (run_id,))[0][0] or 0
                if after >= last:
                    return
            upto = min(after + page, last)
            rows = self._read(run_id, sql, (run_id, after, upto, *names))
            if rows or not names:
                yield rows
                after = upto
                continue
            # None of these types in the range: go straight to the next event that has one.
            found = self._read(run_id, next_match_sql(style, len(names)), (run_id, upto, *names))[0][0]
            after = last if found is None else max(upto, found - 1)

    def _read(self, run_id: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        with self._connect() as conn:
            try:
                cur = conn.connection.dbapi_connection.cursor()
                cur.execute(sql, params)
                rows = cur.fetchall()
                cur.close()
                return rows
            except dbapi_error as exc:
                if is_busy(exc):
                    raise self._busy() from None
                raise StoreError(f"cannot read events of run {run_id} in {self.where}: {one_line(exc)}") from exc
