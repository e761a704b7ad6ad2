"""An index of events by key, beside the log: a settled query by its id (the hash of its identity).

Answering a query from another run of the store ("reuse") must not scan every settled event of
every run; one probe of this table finds the event, one primary-key read fetches it. Rows are
written in the same transaction as the events they point at, so the index is never ahead of or
behind the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .records import NewEvent, StoredEvent
from .sql import text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

# Which events are indexed, under which key: a settled query under its id, so an identical query in
# another run is answered from the store; a reused one under "reused:" + its id, so a run finds
# its own reused answers again.
KEYED = {"query_settled": "", "query_reused": "reused:"}


def key_of(type_: str, payload: dict[str, Any]) -> str | None:
    prefix = KEYED.get(type_)
    qid = payload.get("query_id") if prefix is not None else None
    return None if qid is None else prefix + qid


def insert_row_keys(conn: Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """Index stored rows (run_id, seq, type, v, payload, ts, hash) copied in from another store."""
    import orjson

    keys = []
    for run_id, seq, type_, _v, payload, ts, _h in rows:
        if type_ in KEYED:
            key = key_of(type_, orjson.loads(payload))
            if key is not None:
                keys.append({"k": key, "run": run_id, "seq": seq, "ts": ts})
    if keys:
        conn.execute(text("INSERT INTO event_keys (key, run_id, seq, ts) VALUES (:k, :run, :seq, :ts)"), keys)


class KeyIndex:
    """Mixed into EventStore (which provides `_connect`)."""

    @staticmethod
    def _insert_keys(conn: Connection, run_id: str, first: int, events: Iterable[NewEvent], now: float) -> None:
        keys = [{"k": ev.key, "run": run_id, "seq": first + i, "ts": now}
                for i, ev in enumerate(events, 1) if ev.key is not None]
        if keys:
            conn.execute(text("INSERT INTO event_keys (key, run_id, seq, ts) VALUES (:k, :run, :seq, :ts)"), keys)

    def find_key(self, key: str, run_id: str | None = None) -> tuple[str, int] | None:
        """(run id, seq) of the earliest event indexed under `key` (in `run_id` only, when given)."""
        sql = "SELECT run_id, seq FROM event_keys WHERE key = :k"
        params: dict[str, Any] = {"k": key}
        if run_id is not None:
            sql += " AND run_id = :run"
            params["run"] = run_id
        with self._connect() as conn:  # type: ignore[attr-defined]
            row = conn.execute(text(sql + " ORDER BY ts, run_id, seq LIMIT 1"), params).first()
        return None if row is None else (row[0], int(row[1]))

    def has_keys_outside(self, run_id: str) -> bool:
        """Whether any run but `run_id` has an indexed event (whether reuse can find anything)."""
        with self._connect() as conn:  # type: ignore[attr-defined]
            row = conn.execute(text("SELECT 1 FROM event_keys WHERE run_id <> :run LIMIT 1"), {"run": run_id}).first()
        return row is not None

    def get_event(self, run_id: str, seq: int) -> StoredEvent | None:
        with self._connect() as conn:  # type: ignore[attr-defined]
            row = conn.execute(text("SELECT seq, type, schema_version, payload, ts, hash FROM events "
                                    "WHERE run_id = :id AND seq = :seq"), {"id": run_id, "seq": seq}).first()
        return None if row is None else StoredEvent(run_id, *row)


def create_event_keys(conn: Connection) -> None:
    """Migration 3: the table, and the settled queries a store already holds, indexed once."""
    conn.execute(text("CREATE TABLE IF NOT EXISTS event_keys (key VARCHAR NOT NULL, run_id VARCHAR NOT NULL, "
                      "seq INTEGER NOT NULL, ts FLOAT NOT NULL, PRIMARY KEY (key, run_id, seq))"))
    rows = conn.execute(text("SELECT run_id, seq, type, schema_version, payload, ts, hash FROM events "
                             "WHERE type IN ('query_settled', 'query_reused')")).all()
    insert_row_keys(conn, rows)
