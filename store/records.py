"""What the store holds and hands out: events to append, stored events, run rows, lease tokens,
and how a batch of events is linked into a run's hash chain."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import orjson

from .errors import DamagedEvent
from .hashing import canonical, chain_hash

EVENT_COLUMNS = "run_id, seq, type, schema_version, payload, ts, hash"


@dataclass(slots=True)
class NewEvent:
    type: str
    payload: dict[str, Any]
    schema_version: int = 1
    key: str | None = None  # indexed in `event_keys` (a settled query's id) for lookups across runs
    raw: bytes | None = None  # the payload's canonical form, where the caller already made it


def iso_ms(ts: float) -> str:
    """A stored timestamp as ISO-8601 UTC to the millisecond, exactly as the SQL views render it."""
    from datetime import datetime, timezone

    ms = int(ts * 1000)
    return datetime.fromtimestamp(ms // 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


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
            try:
                self._payload = orjson.loads(self.raw)
            except orjson.JSONDecodeError as exc:  # which event, not just "(char 1)"
                raise DamagedEvent(f"run {self.run_id}, event seq {self.seq} ({self.type}): the stored payload "
                                   f"is not valid JSON ({exc})") from None
        return self._payload

    def as_dict(self) -> dict[str, Any]:
        """For people and jq: the time as ISO-8601 (the exact float stays in the store, under the hash)."""
        return {"seq": self.seq, "type": self.type, "v": self.schema_version, "ts": iso_ms(self.ts),
                "hash": self.hash, "payload": self.payload}


# A run's status once it did what it could: its plan is done, or its budget is spent. Any other
# (running, interrupted, failed) leaves a run that a resume may continue.
FINISHED = frozenset({"completed", "budget_exhausted"})


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


def owner_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owned_here(owner: str) -> bool:
    """Whether `owner` is a process of this host (whose life `owner_alive` can see)."""
    return owner.rsplit(":", 2)[0] == socket.gethostname()


def owner_alive(owner: str) -> bool:
    """Only a process on this host can be checked; others are judged by heartbeat age."""
    try:
        _host, pid, _ = owner.rsplit(":", 2)
    except ValueError:
        return False
    if not owned_here(owner):
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def chain_rows(run_id: str, events: Iterable[NewEvent], expected_seq: int, prev_hash: str,
               now: float) -> tuple[list[tuple[Any, ...]], int, str]:
    """The rows for `events` after (expected_seq, prev_hash), each linked into the hash chain."""
    rows: list[tuple[Any, ...]] = []
    seq, head = expected_seq, prev_hash
    for ev in events:
        seq += 1
        raw = ev.raw if ev.raw is not None else canonical(ev.payload)
        head = chain_hash(head, seq, ev.type, ev.schema_version, now, raw)
        rows.append((run_id, seq, ev.type, ev.schema_version, raw.decode(), now, head))
    return rows, seq, head
