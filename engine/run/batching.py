"""Batch mode (`[teacher] batch = true`): queries go out through the provider's batch API.

The same invariants as online dispatch, over hours instead of seconds:
- every query is reserved at its worst case (at batch prices) before its batch is prepared;
- `batch_prepared` (with each query's dispatch) is durable before anything is uploaded, and the
  provider's batch id is recorded the moment it is known (`batch_submitted`), so a resumed run
  polls the existing batch and never submits those queries again - and a batch whose creation
  the dead process did not record is looked up by our key before anything is decided;
- each result settles its own query at its own usage; a request that failed, expired or was
  cancelled is released or, within its attempts and the budget, goes into the next batch;
- a batch refused for the tokens the provider holds queued, or as more bytes than it takes at once,
  is no verdict on its requests: they go into the next batch, smaller or later (see
  batch_room.py), without using up their attempts.
A batch is submitted when `size` queries wait, or as many as the provider takes in bytes, or none
arrived for `wait_s`, and is polled every `poll_s`; its state changes are recorded (`batch_status`)
and shown in the live view.
"""

from __future__ import annotations

import asyncio

import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from ..api import BatchAPI, ChatRequest
from ..errors import FailureKind, FatalRunError, RunStopping, TeacherError
from ..ledger.events import BatchPrepared, BatchStatus, BatchSubmitted, QueryDispatched
from ..ledger.ledger import Amount
from .batch_calls import RETRY_S, from_provider, read_results
from .batch_outcomes import BatchOutcomes, Pending
from .batch_room import BatchRoom, typical_tokens
from .samples import Member
from .teacher_contract import prompt_bound

if TYPE_CHECKING:
    from ..scheduler.endpoint import Endpoint
    from .dispatcher import Dispatcher



class BatchUnsure(Exception):
    """Whether a batch was created cannot be told (see BatchQueue._find)."""


class BatchQueue(BatchOutcomes):
    def __init__(self, api: BatchAPI) -> None:
        self.api = api
        self._queue: list[Pending] = []
        self._queued_bytes = 0
        self._arrived = anyio.Event()
        self._last_arrival = 0.0
        self._waiting: dict[str, Pending] = {}  # submitted, waiting for results
        self._stopped = False
        self._d: "Dispatcher | None" = None
        self._ep: "Endpoint | None" = None
        self._adopted: list[tuple[str, dict[str, Any], dict[str, Pending]]] = []
        self._refused_in_a_row = 0  # see batch_outcomes.MAX_REFUSED_BATCHES
        self.room = BatchRoom()
        self._warned: set[str] = set()

    @property
    def size(self) -> int:
        return self.room.size(self.api.size)

    @property
    def max_bytes(self) -> int:
        return self.room.max_bytes(self.api.max_bytes)

    def _next_batch(self) -> int:
        """How many queued queries the next batch takes: `size`, and never more bytes than the
        provider takes in one (but always one, which alone is what it is)."""
        n, total, cap = 0, 0, self.max_bytes
        for p in self._queue[: self.size]:
            total += p.nbytes
            if n and total > cap:
                break
            n += 1
        return n

    # ---- asking ------------------------------------------------------------------------------

    async def ask(self, d: "Dispatcher", ep: "Endpoint", role: str, members: list[Member], params: dict[str, Any],
                  messages: list[dict[str, str]], purpose: str, strategy: str) -> dict[str, str]:
        """Queue the request for `members` (k samples of one prompt go as one `n=k` line) and wait
        for its batch; the answers by query id (those the budget let in: at least the first)."""
        if self._stopped:
            raise RunStopping("the run is stopping")
        base = ChatRequest(model=ep.model, messages=tuple(messages), **params)
        prompt = prompt_bound(ep.teacher, base, ep.who)
        d._start(ep, members)
        members, worsts = d._fit(ep, role, strategy, base, prompt, members)
        d.reserve(ep, role, purpose, strategy, base, members, worsts)
        request = base.model_copy(update={"n": len(members)}) if len(members) > 1 else base
        p = Pending(members[0], role, strategy, purpose, request, anyio.Event(), prompt,
                    nbytes=self.api.request_bytes(members[0].qid, request), others=members[1:])
        self._enqueue(p)
        await p.done.wait()
        if p.error is not None:
            raise p.error
        return p.texts

    def _enqueue(self, p: Pending) -> None:
        self._queue.append(p)
        self._queued_bytes += p.nbytes
        self._last_arrival = anyio.current_time()
        self._arrived.set()

    def stop(self) -> None:
        """Nothing new is submitted; every asker stops waiting (batches already submitted stay with
        the provider and are polled again by a resume)."""
        self._stopped = True
        self.room.close()
        for p in [*self._queue, *self._waiting.values()]:
            self._resolve(p, error=RunStopping("the run is stopping"))
        self._arrived.set()

    def release_queued(self) -> None:
        """Give back the reservations of queries that never made it into a batch."""
        d = self._d
        for p in self._queue:
            if d is not None:
                self._abandon_all(p, "the run stopped before its batch was submitted")
            self._resolve(p, error=RunStopping("the run is stopping"))
        self._queue.clear()
        self._queued_bytes = 0

    # ---- the collector -----------------------------------------------------------------------

    async def run(self, d: "Dispatcher", ep: "Endpoint") -> None:
        """Collect queries into batches and follow each batch; runs for the whole run."""
        self._d, self._ep = d, ep
        async with anyio.create_task_group() as tg:
            for key, info, pendings in self._adopted:
                self.room.started(key, 0.0)  # (its prompts were not kept: only the ended event counts)
                tg.start_soon(self._resume_batch, key, info, pendings)
            while True:
                if not self._queue or self._stopped:
                    self._arrived = anyio.Event()
                    await self._arrived.wait()
                    continue
                while len(self._queue) < self.size and self._queued_bytes <= self.max_bytes and not self._stopped:
                    quiet = anyio.current_time() - self._last_arrival
                    if quiet >= self.api.wait_s:
                        break
                    self._arrived = anyio.Event()
                    with anyio.move_on_after(self.api.wait_s - quiet):
                        await self._arrived.wait()
                await self.room.wait(_tokens(self._queue[: self._next_batch()]))
                if self._stopped:
                    continue
                n = self._next_batch()  # (the caps may have changed during the wait)
                take, self._queue = self._queue[:n], self._queue[n:]
                self._queued_bytes -= sum(p.nbytes for p in take)
                await self._prepare_and_start(tg, take)

    async def _prepare_and_start(self, tg: Any, pendings: list[Pending]) -> None:
        d, ep = self._d, self._ep
        assert d is not None and ep is not None
        key = "b" + uuid.uuid4().hex[:16]
        at = time.time()
        lines = {p.member.qid: [m.qid for m in p.members] for p in pendings if p.others}
        d.recorder.emit(BatchPrepared(key=key, provider=ep.teacher.provider, model=ep.model, role=pendings[0].role,
                                      query_ids=[m.qid for p in pendings for m in p.members], at=at, lines=lines))
        for p in pendings:
            for m in p.members:
                d.recorder.emit(QueryDispatched(query_id=m.qid, attempt=m.attempt, request=key))
            self._waiting[p.member.qid] = p
        await d.recorder.flush()  # recorded before anything is uploaded
        self.room.started(key, _tokens(pendings))
        tg.start_soon(self._submit, key, at, pendings)

    async def _submit(self, key: str, at: float, pendings: list[Pending]) -> None:
        try:
            await self._submit_and_follow(key, at, pendings)
        finally:
            self.room.ended(key)

    async def _submit_and_follow(self, key: str, at: float, pendings: list[Pending]) -> None:
        d, ep = self._d, self._ep
        assert d is not None and ep is not None
        reqs = [(p.member.qid, p.request) for p in pendings if p.request is not None]
        by_qid = {p.member.qid: p for p in pendings}
        file_id = None
        try:
            file_id = await self.api.upload(key, reqs)
            if file_id is not None:
                ep.answered += 1  # the provider answered: a refused connect later is not a wrong base_url
                d.recorder.emit(BatchStatus(key=key, status="uploaded", input_file_id=file_id))
                await d.recorder.flush()
            batch_id = await self.api.create(key, file_id, reqs)
            ep.answered += 1
        except TeacherError as err:
            try:
                batch_id = await self._find(key, file_id, at, len(reqs)) if err.maybe_billed else None
            except BatchUnsure as unsure:
                self._settle_unsure(key, by_qid, f"{err.message}; {unsure}")
                return
            if batch_id is None:
                too_large = err.kind is FailureKind.TOO_LARGE and self._too_large(pendings, err)
                self._settle_all(key, by_qid, {}, "not_submitted", err, no_room=too_large)
                return
        d.recorder.emit(BatchSubmitted(key=key, batch_id=batch_id, input_file_id=file_id))
        await d.recorder.flush()
        await self._follow(key, batch_id, by_qid)

    async def _find(self, key: str, file_id: str | None, at: float, count: int) -> str | None:
        """The provider's id for batch `key` whose creation was not recorded, or None: it surely was
        never created. BatchUnsure when that cannot be told: taken for not created, its queries were
        sent again and, if it had run, paid twice (the provider unreachable; several batches like it
        where the provider keeps no key of ours, the run's own earlier ones left out)."""
        assert self._d is not None
        known = self._d.ledger.batch_ids
        for _ in range(3):
            try:
                found = [b for b in await self.api.find(key, file_id, at, count) if b not in known]
            except TeacherError:
                await anyio.sleep(RETRY_S)
                continue
            if len(found) > 1:
                raise BatchUnsure(f"{len(found)} batches at the provider could be it ({', '.join(found[:3])})")
            return found[0] if found else None
        raise BatchUnsure("the provider could not be asked whether it was created")

    def _settle_unsure(self, key: str, pendings: dict[str, Pending], why: str) -> None:
        """A batch that may have been created and cannot be found: its queries' outcome is unknown,
        so they count as spent (maybe billed), as a request that timed out after it was sent."""
        lost = TeacherError(FailureKind.CONNECTION, f"the batch may have been created, and cannot be followed: {why}",
                            maybe_billed=True)
        self._settle_all(key, pendings, {}, "unknown", lost)

    # ---- following a batch to its results ----------------------------------------------------

    async def _follow(self, key: str, batch_id: str, pendings: dict[str, Pending]) -> None:
        d = self._d
        assert d is not None
        last = None
        try:
            while True:
                view = await from_provider(batch_id, "poll", lambda: self.api.poll(batch_id), self._warn_once)
                if view.status != last:
                    d.recorder.emit(BatchStatus(key=key, status=view.status, counts=view.counts))
                    last = view.status
                if view.ended:
                    break
                await anyio.sleep(self.api.poll_s)
            results = await from_provider(batch_id, "download the results of", lambda: read_results(self.api, batch_id),
                                          self._warn_once) if last != "failed" else {}
        except FatalRunError as stop:  # the batch stays with the provider, its queries with it; the run
            for p in pendings.values():  # stops (raised through the queue: an adopted batch has no asker)
                self._waiting.pop(p.member.qid, None)
                self._resolve(p, error=stop)
            raise
        kind = FailureKind.BATCH_FAILED if last == "failed" else FailureKind.EXPIRED
        note = TeacherError(kind, "not run: " + (f"the batch {last}" if last in ("failed", "expired", "cancelled")
                                                 else "the batch ended without this request's result") + (
            f" ({view.message})" if view.message else ""))
        no_room = last == "failed" and view.over_token_limit and self._no_room(key, view, len(pendings))
        self._settle_all(key, pendings, results, last or "ended", note, no_room=no_room)

    # ---- a resumed run: batches an earlier session submitted -----------------------------------

    def adopt(self, d: "Dispatcher", ep: "Endpoint") -> None:
        """Take over the batches an earlier session left open for this endpoint. Called before any
        item runs: an item asking for one of their queries then waits for its result."""
        self._d, self._ep = d, ep
        for key, info in d.ledger.batches.items():
            if info.get("model") != ep.model or info.get("provider") != ep.teacher.provider:
                continue
            inside = [q for q, k in d.ledger.batched.items() if k == key]
            lines = info.get("lines") or {}
            sharing = {q for qids in lines.values() for q in qids[1:]}  # answered under their line's id
            pendings: dict[str, Pending] = {}
            for cid in inside:
                if cid in sharing:
                    continue
                members = [_adopted(d, q) for q in lines.get(cid, [cid]) if d.ledger.batched.get(q) == key]
                done = d._asking.setdefault(cid, asyncio.Event())
                for m in members:  # an item asking for any of them waits for the line's answer
                    d._asking[m.qid] = done
                q = d.ledger.queries[cid]
                pendings[cid] = Pending(members[0], q.role, q.strategy, "", None, done, others=members[1:])
                self._waiting[cid] = pendings[cid]
            self._adopted.append((key, dict(info), pendings))

    async def _resume_batch(self, key: str, info: dict[str, Any], pendings: dict[str, Pending]) -> None:
        d = self._d
        assert d is not None
        try:
            batch_id = info.get("batch_id")
            if batch_id is None:
                try:
                    batch_id = await self._find(key, info.get("input_file_id"), info.get("at", 0.0), info["requests"])
                except BatchUnsure as unsure:
                    self._settle_unsure(key, pendings, str(unsure))
                    return
                if batch_id is None:
                    gone = TeacherError(FailureKind.EXPIRED, "the batch was never created (the run stopped first)")
                    self._settle_all(key, pendings, {}, "not_submitted", gone)
                    return
                d.recorder.emit(BatchSubmitted(key=key, batch_id=batch_id, input_file_id=info.get("input_file_id")))
            await self._follow(key, batch_id, pendings)
        finally:
            self.room.ended(key)


def _adopted(d: "Dispatcher", qid: str) -> Member:
    """A query of a batch an earlier session submitted, as the ledger knows it (its reservation
    checks what the provider reports)."""
    q = d.ledger.queries[qid]
    return Member(qid, q.key, 0, "", attempt=q.dispatched_attempt or q.attempts, worst=Amount.of(q.worst.as_dict()))


def _tokens(pendings: list[Pending]) -> float:
    """The typical prompt tokens of a batch of these queries (see batch_room.py)."""
    return typical_tokens(sum(p.prompt for p in pendings))
