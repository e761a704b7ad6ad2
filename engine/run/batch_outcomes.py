"""What a batch's end does to its queries: each result settles its own query, and what failed is
released or goes into the next batch (the outcome half of batching.BatchQueue, a mixin: it needs
the queue's dispatcher, endpoint, waiting queries and room)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ..api import UNREADABLE, ChatRequest, Completion
from ..errors import BudgetExhausted, FailureKind, FatalRunError, QueryFailed, TeacherError
from ..ledger.events import AttemptFailed, BatchFinished, QueryAbandoned, RunWarning
from ..redact import one_line
from .batch_room import BatchRoom
from .misconfig import endpoint_url, misconfiguration
from ..ledger.ledger import Amount
from .samples import Member
from .usage_check import fault_error, fault_event

if TYPE_CHECKING:
    from ..scheduler.endpoint import Endpoint
    from .dispatcher import Dispatcher

# Batches in a row refused whole (not submitted, or failed at validation) with none run between:
# the provider refuses what we send, and since a refused batch costs nothing, the budget would
# never end the run (a plan without end submitted a new batch every few hundred milliseconds).
MAX_REFUSED_BATCHES = 3


@dataclass
class Pending:
    """One request waiting for its batch: a query, or k samples of one prompt as an `n=k` line
    (`member` first, its custom id, then `others` in the order of the answers). `request` is None
    for one adopted from an earlier session (its askers re-ask what does not settle)."""

    member: Member
    role: str
    strategy: str
    purpose: str
    request: ChatRequest | None
    done: anyio.Event
    prompt: int = 0
    nbytes: int = 0  # what it adds to its batch's upload (BatchAPI.request_bytes)
    others: list[Member] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # by query id, once answered
    error: BaseException | None = None

    @property
    def members(self) -> list[Member]:
        return [self.member, *self.others]


class BatchOutcomes:
    _d: "Dispatcher | None"
    _ep: "Endpoint | None"
    _waiting: dict[str, Pending]
    _refused_in_a_row: int
    _warned: set[str]  # the run warnings this queue gave (each once)
    _stopped: bool
    room: BatchRoom
    size: int

    def _enqueue(self, p: Pending) -> None: ...

    def _no_room(self, key: str, view: Any, n: int) -> bool:
        """The batch went over the provider's enqueued token limit: smaller or later batches from
        now on, said once (see batch_room.py). False when nothing can change (one request, alone)."""
        ep = self._ep
        assert ep is not None
        change = self.room.refused(key, n, view.token_limit)
        if change is None:
            return False
        limit = f" ({view.token_limit:,} tokens)" if view.token_limit else ""
        self._warn_once("batch_token_limit", (
            f"[{ep.section}] {ep.model}: the provider refused a batch of {n} requests for its enqueued "
            f"token limit{limit}: {change}; its requests go into the next batch. Set [{ep.section}] batch_size "
            f"to {self.size} or less to start there"))
        return True

    def _too_large(self, pendings: list[Pending], err: TeacherError) -> bool:
        """The provider refused the batch as more bytes than it takes at once: later batches are
        half its size, said once. False when it held one request (too large alone)."""
        ep = self._ep
        assert ep is not None
        nbytes = sum(p.nbytes for p in pendings)
        change = self.room.too_large(len(pendings), nbytes)
        if change is None:
            return False
        self._warn_once("batch_too_large", (
            f"[{ep.section}] {ep.model}: the provider refused a batch of {len(pendings)} requests "
            f"({nbytes:,} bytes) as too large ({one_line(err.message, 120)}): {change}; its requests go "
            f"into the next batch. Set [{ep.section}] batch_max_mb below {nbytes / 1e6:.3g} (this batch's "
            "size) to start under the provider's cap"))
        return True

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            assert self._d is not None
            self._d.recorder.emit(RunWarning(kind=kind, message=message))

    def _settle_all(self, key: str, pendings: dict[str, Pending], results: dict[str, Completion | TeacherError],
                    status: str, missing: TeacherError, *, no_room: bool = False) -> None:
        d, ep = self._d, self._ep
        assert d is not None and ep is not None
        settled = failed = 0
        retry: list[tuple[Pending, TeacherError]] = []
        for cid, p in pendings.items():
            self._waiting.pop(cid, None)
            r = results[cid] if cid in results else results.get(UNREADABLE, missing)
            if isinstance(r, Completion):
                texts = self._answered(p, r)
                settled += len(texts)
                failed += len(p.others) + 1 - len(texts)
                continue
            failed += len(p.others) + 1
            for m in p.members:
                d.recorder.emit(AttemptFailed(query_id=m.qid, attempt=m.attempt, kind=r.kind.value,
                                              maybe_billed=r.maybe_billed, message=r.message[:300], status=r.status))
            retry.append((p, r))
        d.recorder.emit(BatchFinished(key=key, status=status, settled=settled, failed=failed,
                                      message=missing.message[:300] if failed else ""))
        refused = not settled and status in ("not_submitted", "failed")
        if not no_room:  # a batch refused for room is no refusal of what we send
            self._refused_in_a_row = self._refused_in_a_row + 1 if refused else 0
        if self._refused_in_a_row >= MAX_REFUSED_BATCHES:
            stop = (f"the {ep.section}'s batches are refused ({self._refused_in_a_row} in a row, none run; the last: "
                    f"{one_line(missing.message, 200)}); stopping")
            for p, _ in retry:
                self._abandon_all(p, stop)
                self._resolve(p, error=FatalRunError(stop))
            return
        for p, err in retry:
            p.member.spared += no_room
            self._retry_or_release(p, err, verdict=not no_room)

    def _answered(self, p: Pending, r: Completion) -> dict[str, str]:
        """Settle the queries of an answered request (k samples of one: each at its share, as online)
        and wake their asker; their texts by query id."""
        d, ep = self._d, self._ep
        assert d is not None and ep is not None
        members, usage = p.members, r.usage
        worst = None
        if all(m.worst is not None for m in members):
            worst = Amount()
            for m in members:
                worst.add(m.worst)  # type: ignore[arg-type]
        usd = ep.price.cost(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) if ep.price else 0.0
        fault = fault_event(p.member.qid, p.member.attempt, usage, worst, usd) if worst is not None else None
        if fault is not None:  # settled below at what it reported, then the asker stops the run
            d.recorder.emit(fault)
        max_tokens = p.request.max_tokens if p.request is not None else max(
            (m.worst.output_tokens for m in members if m.worst is not None), default=0)
        texts = d._settle(ep, members, max_tokens, r, None, p.member.qid if p.others else None)
        for qid, text in texts.items():
            d.remember(qid, text)
        if fault is not None:
            self._resolve(p, error=fault_error(ep.teacher.provider, ep.model, fault))
        else:
            self._resolve(p, texts=texts)
        return texts

    def _retry_or_release(self, p: Pending, err: TeacherError, *, verdict: bool = True) -> None:
        """Into the next batch within the request's attempts and the budget; else released. Without
        `verdict` the error said nothing of the request itself (its batch found no room)."""
        d, ep = self._d, self._ep
        assert d is not None and ep is not None
        m = p.member
        stop = misconfiguration(err, role=p.role, section=ep.section, model=ep.model, url=endpoint_url(ep.teacher),
                                answered=ep.answered) if p.request is not None and verdict else None
        if stop is not None:  # nothing listens at base_url, or no such model: every batch would fail alike
            self._abandon_all(p, stop)
            self._resolve(p, error=FatalRunError(stop))
            return
        again = not verdict or ep.retry.should_retry(err.kind, m.attempt - m.spared)
        if p.request is not None and not self._stopped and again:
            for x in p.members:
                x.attempt += 1
            if not err.maybe_billed:
                self._enqueue(p)  # still holding its reservations
                return
            base = p.request.model_copy(update={"n": 1})
            try:
                kept, worsts = d._fit(ep, p.role, p.strategy, base, p.prompt, p.members)
            except BudgetExhausted as exc:
                self._abandon_all(p, f"budget cannot cover a retry ({exc})")
                self._resolve(p, error=exc)
                return
            for x in p.members[len(kept):]:
                d.recorder.emit(QueryAbandoned(query_id=x.qid, reason=(
                    "budget cannot cover its share of a retry; asked again on its own")))
            d.reserve(ep, p.role, p.purpose, p.strategy, base, kept, worsts)
            p.others = kept[1:]
            p.request = p.request.model_copy(update={"n": len(kept)})
            self._enqueue(p)
            return
        reason = f"{err.kind.value} after {m.attempt} attempt(s): {err.message}"
        self._abandon_all(p, reason)
        if p.request is None:
            self._resolve(p)
        elif err.kind is FailureKind.AUTH:
            self._resolve(p, error=FatalRunError(f"the {p.role} rejected our credentials: {err.message}"))
        else:
            self._resolve(p, error=QueryFailed(reason))

    def _abandon_all(self, p: Pending, reason: str) -> None:
        assert self._d is not None
        for m in p.members:
            self._d.recorder.emit(QueryAbandoned(query_id=m.qid, reason=reason))

    def _resolve(self, p: Pending, *, texts: dict[str, str] | None = None, error: BaseException | None = None) -> None:
        p.texts, p.error = texts or {}, error
        if p.request is None and self._d is not None:  # adopted: its events are the dispatcher's
            for m in p.members:
                self._d._asking.pop(m.qid, None)
        p.done.set()
