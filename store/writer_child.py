"""The writer process's side of `writer_process`: the loop that opens a store and answers each call,
and the wire both sides speak (a 4-byte length, then a pickle: the two are one program, so pickle's
trust is not a concern).

Run by the parent as `python -c` (see `writer_process._BOOT`); kept small, since the child imports
only this, the store and what it needs."""

from __future__ import annotations

import pickle
import struct
import sys
from typing import Any, BinaryIO

from .records import NewEvent

HEADER = struct.Struct(">I")


def send(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    """The next message, or None at the end of the stream (also one cut short)."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


def events_of(rows: list[tuple[Any, ...]]) -> list[NewEvent]:
    """The events of an `append` call as they cross the pipe: (type, version, key, canonical bytes
    or the payload itself)."""
    return [NewEvent(t, {}, v, key, body) if isinstance(body, bytes) else NewEvent(t, body, v, key)
            for t, v, key, body in rows]


def _error(exc: BaseException) -> tuple[str, str, str, str | None]:
    orig = getattr(exc, "orig", None) or getattr(exc.__cause__, "orig", None)
    return ("error", type(exc).__name__, str(exc), None if orig is None else str(orig))


def _append(store: Any, run_id: str, rows: list[tuple[Any, ...]], expected_seq: int, prev_hash: str,
            owner: str | None, status: str | None) -> tuple[int, str]:
    return store.append(run_id, events_of(rows), expected_seq, prev_hash, owner=owner, status=status)


def serve() -> None:
    """The child's loop: open the store the first message names, then answer each call in turn."""
    from .eventstore import EventStore

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    opening = receive(inp)
    if opening is None:
        return
    _, url, busy_timeout = opening
    try:
        store = EventStore(url, busy_timeout=busy_timeout, must_exist=True)
    except Exception as exc:
        send(out, _error(exc))
        return
    send(out, ("ok", None))
    ops = {"append": _append, "heartbeat": lambda s, run_id, owner: s.heartbeat(run_id, owner)}
    while (request := receive(inp)) is not None:
        try:
            reply: Any = ("ok", ops[request[0]](store, *request[1:]))
        except Exception as exc:
            reply = _error(exc)
        send(out, reply)
    store.close()
