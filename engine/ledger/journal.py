"""The one event writer, for every kind of run (generation, training, evaluation, experiment).

A generation run's many concurrent tasks `emit` events and one writer loop makes them durable in
group commits: `emit` numbers the event, hands it to every subscriber at once (the budget ledger
subscribes, so the next budget check already sees a reservation; so does the live view) and
queues it; `flush` waits until everything emitted so far is committed. The dispatcher flushes
before every send, which is what makes "recorded before it is sent" true without one fsync per
request: all sends that are ready in the same few milliseconds share one commit.

Sparse runs (training, evaluation, an experiment) have no writer loop: opened with
`durable_each=True`, every `emit` (or `record`, for a trainer's `(type, payload)` callback) is
committed before it returns, and a refused commit raises.

It is also the one door to the store, so two guarantees live here. Every payload is scrubbed of
secrets on its way in (see `redact`). And when a commit fails (the disk is full, the store became
read-only, another process took the run's lease) the writer stops for good: nothing emitted after
that is kept, every `flush` raises `WriterFailed` (so nothing more is sent: a send needs a durable
dispatch record first), and `on_failure` tells the runner to stop at once. What was committed
before stays, which is all a resume needs.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable

import anyio
import anyio.lowlevel

from pydantic import BaseModel

from ...store.eventstore import EventStore, NewEvent, StoreError
from ..redact import scrub_payload
from . import crashpoints
from ...store.hashing import canonical
from ...store.keys import key_of
from .events import (SCHEMA_VERSION, ItemDone, QueryDispatched, QueryReserved, QuerySettled,
                     QuestionAdmitted, RunFinished, SampleAccepted, SampleProposed, parse_event, plain_payload,
                     to_payload)
from .event_base import EventBase

HEARTBEAT_S = 5.0


# Events that carry bulk data (prompts, the teacher's text): scrubbed of every key the process knows,
# but not scanned for credential shapes, which would cost on every query for text that is data.
BULK_TYPES = frozenset({QueryReserved.TYPE, QueryDispatched.TYPE, QuerySettled.TYPE, SampleProposed.TYPE,
                        SampleAccepted.TYPE, ItemDone.TYPE, QuestionAdmitted.TYPE})


class WriterFailed(StoreError):
    """The event writer can no longer commit; `cause` is why. Nothing more may be sent."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"event writer failed: {cause}")
        self.cause = cause


Subscriber = Callable[[int, str, dict[str, Any]], None]  # (seq, type, payload), in order, at emit


class Journal:
    def __init__(self, store: EventStore, run_id: str, last_seq: int, head_hash: str, owner: str, *,
                 max_batch: int = 2000, heartbeat_s: float = HEARTBEAT_S,
                 on_failure: Callable[[BaseException], None] | None = None, durable_each: bool = False,
                 appender: Any = None) -> None:
        self.store = store
        self.appender = appender if appender is not None else store  # `append`, `heartbeat` (see writer_process)
        self.run_id = run_id
        self.owner = owner
        self._subscribers: list[tuple[Subscriber, frozenset[str] | None]] = []
        self._by_type: dict[str, tuple[Subscriber, ...]] = {}  # type -> its subscribers, found once
        self.durable_each = durable_each
        self.max_batch = max_batch
        self.heartbeat_s = heartbeat_s
        self.on_failure = on_failure
        self._next_seq = last_seq + 1
        self._durable_seq = last_seq
        self._head = head_hash
        self._pending: list[NewEvent] = []
        self._wakeup = anyio.Event()
        self._committed = anyio.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._writer_gone = False  # the writer task ended (cancelled or failed)
        self._last_commit = time.monotonic()

    @classmethod
    def start(cls, store: EventStore, name: str, config: dict[str, Any], config_hash: str,
              first: list[BaseModel | tuple[str, dict[str, Any]]], *, kind: str, owner: str,
              parent_id: str | None = None, run_id: str | None = None, **options: Any) -> "Journal":
        """A new run: its row and its first events (`run_started`, ...; typed, or (type, payload)
        checked like `record`) in one commit, so a kill leaves either no run or one that starts whole."""
        events = [_new_event(*(to_payload(ev) if isinstance(ev, BaseModel) else _plain(*ev))) for ev in first]
        run_id, last, head = store.start_run(name, config, config_hash, events, kind=kind, parent_id=parent_id,
                                             owner=owner, run_id=run_id)
        return cls(store, run_id, last, head, owner, **options)

    def subscribe(self, fn: Subscriber, types: Iterable[str] | None = None) -> None:
        """Call `fn(seq, type, payload)` with every event emitted from now on, as it is emitted; with
        `types`, only with events of those types (a run emits six a query, and most subscribers
        care about one or two of them)."""
        self._subscribers.append((fn, None if types is None else frozenset(types)))
        self._by_type.clear()

    def _subscribers_of(self, type_: str) -> tuple[Subscriber, ...]:
        fns = self._by_type[type_] = tuple(fn for fn, types in self._subscribers if types is None or type_ in types)
        return fns

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    @property
    def failed(self) -> BaseException | None:
        """Why the writer stopped committing, or None while it works."""
        return self._error

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            self._pending = []
            if self.on_failure is not None:
                self.on_failure(exc)
        done, self._committed = self._committed, anyio.Event()
        done.set()  # flushers wake and raise

    def emit(self, event: BaseModel) -> int:
        """Queue one event; returns its sequence number (-1 once the writer has failed: the event
        cannot be kept, and the run is stopping)."""
        return self._append(*to_payload(event))

    def emit_plain(self, cls: type[EventBase], **values: Any) -> int:
        """`emit(cls(**values))` for the engine's own per-query events, without the model (see
        `plain_payload`): `values` must already be what the model would dump."""
        return self._append(*plain_payload(cls, **values))

    def record(self, type_: str, payload: dict[str, Any]) -> int:
        """`emit` for an event given as (type, payload), e.g. by a trainer's callback: checked
        against the event vocabulary first, and made plain JSON (paths, numpy scalars as text)."""
        return self._append(*_plain(type_, payload))

    def _append(self, type_: str, payload: dict[str, Any]) -> int:
        if self._error is not None:
            if self.durable_each:
                raise WriterFailed(self._error)
            return -1
        new = _new_event(type_, payload)
        seq = self._next_seq
        self._next_seq += 1
        fns = self._by_type.get(type_)
        for fn in fns if fns is not None else self._subscribers_of(type_):
            fn(seq, type_, new.payload)
        self._pending.append(new)
        if self.durable_each:
            self.commit_now()
            if self._error is not None:
                raise WriterFailed(self._error)
        else:
            self._wakeup.set()
        return seq

    def finish(self, status: str, message: str = "") -> None:
        """A sparse run's end: `run_finished` recorded, the run's lease given up."""
        self.emit(RunFinished(status=status, message=message))  # type: ignore[arg-type]
        self.store.release(self.run_id, self.owner, status)

    async def flush(self) -> None:
        """Return once every event emitted before this call is durable."""
        target = self._next_seq - 1
        while self._durable_seq < target or self._error is not None:
            if self._error is not None:
                raise WriterFailed(self._error)
            if self._closed:
                raise StoreError("event writer is closed")
            if self._writer_gone:  # the writer task is gone (cancelled at shutdown): commit here
                if not self._pending:  # nothing left to commit, and still behind: never wait for it
                    raise StoreError(f"events {self._durable_seq + 1}..{target} were taken for a commit "
                                     "that did not finish")
                self.commit_now()
                continue
            await self._committed.wait()

    async def run(self) -> None:
        """The writer loop; run it in the run's task group and call `close()` to end it.

        Being cancelled is not a failure: what is queued then is committed by `close()` itself."""
        try:
            while self._error is None:
                if not self._pending:
                    if self._closed:
                        return
                    with anyio.move_on_after(self.heartbeat_s):
                        await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    if not self._pending:
                        if not self._closed:
                            await self._heartbeat()
                        continue
                await self._commit_some()
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # the store refused a commit or a heartbeat: stop, do not crash the run
            self._fail(exc)
        finally:
            self._writer_gone = True
            done, self._committed = self._committed, anyio.Event()
            done.set()  # flushers waiting on a commit re-check, and commit themselves if need be

    async def _commit_some(self) -> None:
        # One loop iteration first: the tasks already woken add their events to this commit rather
        # than the next. Fewer, larger commits cost the loop less (a zero-latency run: 3% faster,
        # 4% less CPU a query, interleaved); idle, an iteration is microseconds.
        await anyio.lowlevel.checkpoint()
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
        base = self._durable_seq
        # Shielded: a cancellation (the run's teardown) arriving while the thread commits would
        # otherwise skip the line below, leaving the events in the store and the journal behind
        # them - and every later flush waiting forever for a commit that already happened.
        with anyio.CancelScope(shield=True):
            aappend = getattr(self.appender, "aappend", None)  # (a writer process is asked from the loop itself)
            if aappend is not None:  # (which wakes the flushers as soon as it reads the answer)
                await aappend(self.run_id, batch, base, self._head, owner=self.owner, on_answer=self._committed_to)
            else:
                self._committed_to(await anyio.to_thread.run_sync(
                    lambda: self.appender.append(self.run_id, batch, base, self._head, owner=self.owner)))

    def _committed_to(self, durable: tuple[int, str]) -> None:
        self._durable_seq, self._head = durable
        crashpoints.committed()
        done, self._committed = self._committed, anyio.Event()
        done.set()

    async def _heartbeat(self) -> None:
        aheartbeat = getattr(self.appender, "aheartbeat", None)
        if aheartbeat is not None:
            with anyio.CancelScope(shield=True):  # (as a thread's call would be: the answer is awaited)
                await aheartbeat(self.run_id, self.owner)
        else:
            await anyio.to_thread.run_sync(self.appender.heartbeat, self.run_id, self.owner)

    async def close(self) -> None:
        """Commit what is queued and stop the writer loop (after a failure: just stop it)."""
        try:
            if self._writer_gone:
                self.commit_now()
            elif self._error is None:
                await self.flush()
        except WriterFailed:
            pass
        self._closed = True
        self._wakeup.set()

    def commit_now(self) -> None:
        """Synchronous final commit, for shutdown paths where the event loop is gone."""
        if self._pending and self._error is None:
            try:
                last, head = self.appender.append(self.run_id, self._pending, self._durable_seq, self._head,
                                               owner=self.owner)
            except Exception as exc:
                self._fail(exc)
                return
            self._pending = []
            self._durable_seq, self._head = last, head
            crashpoints.committed()


def _plain(type_: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A loosely typed event checked against the vocabulary and made plain JSON."""
    parse_event(type_, payload)
    return type_, json.loads(json.dumps(payload, default=str))


def _new_event(type_: str, payload: dict[str, Any]) -> NewEvent:
    """What the store appends: the payload scrubbed of secrets on its way in (see `redact`), and its
    canonical form, which the secrets check needs anyway and the commit then need not make again."""
    raw = canonical(payload)
    clean = scrub_payload(payload, shapes=type_ not in BULK_TYPES, raw=raw)
    if clean is not payload:
        raw = canonical(clean)
    return NewEvent(type_, clean, SCHEMA_VERSION, key_of(type_, clean), raw)


Recorder = Journal  # the name it had before it wrote every kind of run
