"""The append-only event store.

Appends are batched (one transaction, one fsync, many events) and guarded twice: the caller states
the sequence number it expects to extend (optimistic concurrency) and, for runs held by a process,
the lease token it owns. Reads stream in keyset-paginated pages so replaying a million events
takes constant memory.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from ..engine.errors import SynthledgerError
from .hashing import GENESIS, canonical, chain_hash
from .migrations import migrate

DEFAULT_DIR = ".synthledger"
ENV_STORE = "SYNTHLEDGER_STORE"
PAGE = 5000


class StoreError(SynthledgerError, RuntimeError):
    """The store cannot be opened or read (bad URL, not a database, newer schema...)."""


class ConcurrencyError(StoreError):
    """Someone else extended this run since we last read it, or holds its lease."""


class RunNotFound(StoreError):
    pass


@dataclass(slots=True)
class NewEvent:
    type: str
    payload: dict[str, Any]
    schema_version: int = 1


class StoredEvent:
    __slots__ = ("run_id", "seq", "type", "schema_version", "raw", "ts", "hash", "_payload")

    def __init__(self, run_id: str, seq: int, type_: str, schema_version: int, raw: str | bytes,
                 ts: float, hash_: str) -> None:
        self.run_id = run_id
        self.seq = seq
        self.type = type_
        self.schema_version = schema_version
        self.raw = raw
        self.ts = ts
        self.hash = hash_
        self._payload: dict[str, Any] | None = None

    @property
    def payload(self) -> dict[str, Any]:
        if self._payload is None:
            self._payload = orjson.loads(self.raw)
        return self._payload

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "v": self.schema_version, "ts": self.ts,
                "hash": self.hash, "payload": self.payload}


@dataclass
class RunInfo:
    id: str
    name: str
    kind: str
    parent_id: str | None
    created: float
    config: dict[str, Any]
    config_hash: str
    status: str
    last_seq: int
    head_hash: str
    owner: str | None
    heartbeat: float | None


def default_url() -> str:
    return f"sqlite:///{Path(DEFAULT_DIR) / 'synthledger.db'}"


def resolve_url(url: str | None) -> str:
    """Explicit URL, else $SYNTHLEDGER_STORE, else the project-local data directory."""
    return url or os.environ.get(ENV_STORE) or default_url()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # durable at every commit; batching keeps that cheap
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def owner_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_alive(owner: str) -> bool:
    """Only a process on this host can be checked; others are judged by heartbeat age."""
    try:
        host, pid, _ = owner.rsplit(":", 2)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _insert_sql(paramstyle: str) -> str:
    """The events INSERT in the driver's own positional parameter style."""
    if paramstyle == "numeric":
        marks = [f":{i}" for i in range(1, 8)]
    elif paramstyle == "numeric_dollar":
        marks = [f"${i}" for i in range(1, 8)]
    else:
        marks = [_PLACEHOLDERS.get(paramstyle, "?")] * 7
    return ("INSERT INTO events (run_id, seq, type, schema_version, payload, ts, hash) "
            f"VALUES ({', '.join(marks)})")


class EventStore:
    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_url(url)
        self.engine = self._open(self.url)

    @staticmethod
    def _open(url: str) -> Engine:
        is_sqlite = url.startswith("sqlite")
        where = repr(url)
        kwargs: dict[str, Any] = {}
        if is_sqlite:
            path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
            if path and path != ":memory:":
                p = Path(path)
                where = str(p)
                if p.exists() and p.is_dir():
                    raise StoreError(f"store path {p} is a directory, not a database file")
                p.parent.mkdir(parents=True, exist_ok=True)
            else:
                # An in-memory database lives in one connection: share it with every thread (the
                # recorder commits from a worker thread), or each thread would see an empty store.
                kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        try:
            engine = create_engine(url, **kwargs)
        except Exception as exc:  # bad URL or missing driver
            raise StoreError(f"cannot open store {where}: {exc}") from exc
        if is_sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        try:
            migrate(engine)
        except DatabaseError as exc:
            raise StoreError(f"cannot open store {where}: {exc.orig}") from exc
        except Exception as exc:
            raise StoreError(f"cannot open store {where}: {exc}") from exc
        return engine

    def close(self) -> None:
        self.engine.dispose()

    # ---- runs -------------------------------------------------------------------------
    def create_run(self, name: str, config: dict[str, Any], config_hash: str, *, kind: str = "generate",
                   parent_id: str | None = None, owner: str | None = None) -> str:
        run_id = uuid.uuid4().hex[:12]
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO runs (id, name, kind, parent_id, created, config, config_hash, status,"
                     " last_seq, head_hash, owner, heartbeat) VALUES (:id, :name, :kind, :parent, :created,"
                     " :config, :hash, 'running', 0, :head, :owner, :hb)"),
                {"id": run_id, "name": name, "kind": kind, "parent": parent_id, "created": now,
                 "config": canonical(config).decode(), "hash": config_hash, "head": GENESIS,
                 "owner": owner, "hb": now if owner else None},
            )
        return run_id

    def _row_to_info(self, row: Any) -> RunInfo:
        m = row._mapping
        return RunInfo(id=m["id"], name=m["name"], kind=m["kind"], parent_id=m["parent_id"],
                       created=m["created"], config=orjson.loads(m["config"]), config_hash=m["config_hash"],
                       status=m["status"], last_seq=m["last_seq"], head_hash=m["head_hash"],
                       owner=m["owner"], heartbeat=m["heartbeat"])

    def get_run(self, run_id: str) -> RunInfo:
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": run_id}).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
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
        with self.engine.connect() as conn:
            return [self._row_to_info(r) for r in conn.execute(text(q), params)]

    def resolve(self, ref: str) -> RunInfo:
        """A run id, a unique id prefix, or a unique run name."""
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": ref}).first()
            if row is not None:
                return self._row_to_info(row)
            rows = conn.execute(text("SELECT * FROM runs WHERE name = :n ORDER BY created"), {"n": ref}).all()
            if not rows:
                rows = conn.execute(text("SELECT * FROM runs WHERE id LIKE :p ORDER BY created"),
                                    {"p": ref.replace("%", "") + "%"}).all()
        if not rows:
            raise RunNotFound(f"no run with id or name {ref!r} in {self.url}")
        if len(rows) > 1:
            ids = ", ".join(r._mapping["id"] for r in rows)
            raise StoreError(f"{ref!r} names {len(rows)} runs ({ids}); pass a run id")
        return self._row_to_info(rows[0])

    def log_end(self, run_id: str) -> tuple[int, int]:
        """(last seq the run row recorded, highest seq actually stored), read in one statement: an
        honest store always has them equal, since append commits both in one transaction."""
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT r.last_seq, (SELECT max(e.seq) FROM events e WHERE e.run_id = r.id) "
                                    "FROM runs r WHERE r.id = :id"), {"id": run_id}).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r} in {self.url}")
        return int(row[0]), int(row[1] or 0)

    def set_status(self, run_id: str, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE runs SET status = :s WHERE id = :id"), {"s": status, "id": run_id})

    # ---- lease: one process extends a run ---------------------------------------------
    def acquire(self, run_id: str, owner: str, ttl_s: float = 30.0) -> None:
        """Take the run's lease, or fail at once naming the holder. A holder is gone when its heartbeat
        is older than ttl_s, or, on this host, when its process no longer exists."""
        info = self.get_run(run_id)
        now = time.time()
        holder = info.owner
        if holder and holder != owner:
            stale = info.heartbeat is None or now - info.heartbeat > ttl_s or not _owner_alive(holder)
            if not stale:
                raise ConcurrencyError(
                    f"run {run_id} is being extended by another process ({holder}); "
                    "wait for it to finish or stop it first")
        with self.engine.begin() as conn:
            res = conn.execute(
                text("UPDATE runs SET owner = :me, heartbeat = :now WHERE id = :id AND "
                     "(owner IS NULL OR owner = :old OR owner = :me)"),
                {"me": owner, "now": now, "id": run_id, "old": holder},
            )
        if res.rowcount != 1:
            raise ConcurrencyError(f"run {run_id} was taken by another process just now")

    def heartbeat(self, run_id: str, owner: str) -> None:
        with self.engine.begin() as conn:
            res = conn.execute(text("UPDATE runs SET heartbeat = :now WHERE id = :id AND owner = :me"),
                               {"now": time.time(), "id": run_id, "me": owner})
        if res.rowcount != 1:
            raise ConcurrencyError(f"lost the lease on run {run_id}")

    def release(self, run_id: str, owner: str, status: str | None = None) -> None:
        with self.engine.begin() as conn:
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

        Fails with ConcurrencyError when the run moved on (or its lease is held by someone else)."""
        rows: list[tuple[Any, ...]] = []
        seq, head = expected_seq, prev_hash
        now = time.time()
        for ev in events:
            seq += 1
            raw = canonical(ev.payload)
            head = chain_hash(head, seq, ev.type, ev.schema_version, now, raw)
            rows.append((run_id, seq, ev.type, ev.schema_version, raw.decode(), now, head))
        if not rows:
            return expected_seq, prev_hash
        guard = " AND owner = :me" if owner is not None else " AND owner IS NULL"
        set_status = ", status = :status" if status else ""
        try:
            with self.engine.begin() as conn:
                res = conn.execute(
                    text(f"UPDATE runs SET last_seq = :new, head_hash = :head, heartbeat = :now{set_status} "
                         f"WHERE id = :id AND last_seq = :expected{guard}"),
                    {"new": seq, "head": head, "id": run_id, "expected": expected_seq, "me": owner,
                     "now": now, "status": status},
                )
                if res.rowcount != 1:
                    raise ConcurrencyError(self._conflict_message(conn, run_id, expected_seq, owner))
                # Straight to the driver: compiling bound parameters per row would cost more than SQLite's
                # own insert work (see benchmarks/eventstore.py).
                conn.exec_driver_sql(_insert_sql(conn.dialect.paramstyle), rows)
        except IntegrityError as exc:
            raise ConcurrencyError(f"run {run_id}: sequence {expected_seq + 1} already written") from exc
        except OperationalError as exc:
            raise StoreError(f"append to run {run_id} failed: {exc.orig}") from exc
        return seq, head

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
        """Events in sequence order, streamed a page at a time."""
        type_filter = ""
        params: dict[str, Any] = {"id": run_id, "page": page}
        if types is not None:
            names = sorted(set(types))
            type_filter = " AND type IN (" + ", ".join(f":t{i}" for i in range(len(names))) + ")"
            params.update({f"t{i}": n for i, n in enumerate(names)})
        q = text("SELECT seq, type, schema_version, payload, ts, hash FROM events WHERE run_id = :id "
                 f"AND seq > :after{type_filter} ORDER BY seq LIMIT :page")
        after = from_seq - 1
        while True:
            with self.engine.connect() as conn:
                try:
                    rows = conn.execute(q, {**params, "after": after}).all()
                except DatabaseError as exc:
                    raise StoreError(f"cannot read events of run {run_id}: {exc.orig}") from exc
            for seq, type_, v, payload, ts, h in rows:
                yield StoredEvent(run_id, seq, type_, v, payload, ts, h)
            if len(rows) < page:
                return
            after = rows[-1][0]
