"""Dispatch of one query: reserve, pace, send, record, retry.

The pieces each live in their own module (engine/scheduler/: limiter, retry policy, circuit
breaker, adaptive concurrency); this module only wires them to the ledger and the event log in the
one order that keeps the invariants: reserve -> record dispatch durably -> send -> record outcome.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio

from ...store.hashing import canonical
from ..ledger.events import AttemptFailed, Cost, QueryAbandoned, QueryDispatched, QueryReserved, QuerySettled
from ..ledger.ledger import Amount, Ledger
from ..ledger.journal import Recorder
from ..scheduler.endpoint import Endpoint
from ..api import ChatRequest, Completion
from ..errors import BudgetExhausted, FailureKind, FatalRunError, QueryFailed, RunStopping, TeacherError

# How many settled answers stay in memory for repeats of the same query (older ones are read back
# from the store): enough for any verifier's look-back, small enough that memory stays flat.
ANSWER_CACHE = 4096


def request_key(provider: str, model: str, params: dict[str, Any], messages: list[dict[str, str]],
                sample_index: int, purpose: str = "") -> str:
    """Identity of a query: same provider, model, parameters, messages, sample index and purpose = same
    query. Purpose is part of it so that, say, a verifier's k-th vote is never the strategy's k-th answer."""
    blob = canonical({"p": provider, "m": model, "params": params, "msgs": messages, "i": sample_index,
                      "why": purpose})
    return hashlib.sha256(blob).hexdigest()


@dataclass
class Dispatcher:
    recorder: Recorder
    ledger: Ledger
    endpoints: dict[str, Endpoint]
    # Settled texts of unfinished items, filled at resume; other repeats are looked up in the store.
    answered: dict[str, str] = field(default_factory=dict)
    lookup_settled: Callable[[str], str | None] | None = None
    rng: random.Random = field(default_factory=random.Random)
    stopping: bool = False  # set by the runner on a signal: start nothing new
    # Recent settled answers by query id (bounded), and queries being asked right now: a second
    # asker of the same query waits for the first instead of paying for it again.
    _recent: OrderedDict[str, str] = field(default_factory=OrderedDict)
    _asking: dict[str, anyio.Event] = field(default_factory=dict)

    def worst_case(self, role: str, request: ChatRequest) -> Amount:
        ep = self.endpoints[role]
        prompt = ep.teacher.prompt_tokens_upper_bound(request)
        out = request.max_tokens * request.n
        usd = ep.price.cost(prompt * request.n, out) if ep.price else 0.0
        return Amount(queries=request.n, input_tokens=prompt * request.n, output_tokens=out, usd=usd)

    def _reserve(self, qid: str, attempt: int, key: str, role: str, purpose: str, strategy: str, item: str,
                 request: ChatRequest, worst: Amount, first: bool) -> None:
        why = self.ledger.headroom(role, strategy, worst)
        if why is not None:
            raise BudgetExhausted(why)
        ep = self.endpoints[role]
        self.recorder.emit(QueryReserved(
            query_id=qid, attempt=attempt, key=key, role=role, purpose=purpose, strategy=strategy, item=item,
            provider=ep.teacher.provider, model=ep.model, worst=Cost(**worst.as_dict()),
            messages=list(request.messages) if first else None,
            params=(request.model_dump(exclude={"messages", "model"}, exclude_none=True) if first else None),
        ))

    def _settled_text(self, qid: str) -> str | None:
        if not self.ledger.is_settled(qid):
            return None
        text = self._recent.get(qid)
        if text is None:
            text = self.answered.get(qid)
        if text is None and self.lookup_settled is not None:
            text = self.lookup_settled(qid)
        return text

    def _remember(self, qid: str, text: str) -> None:
        self._recent[qid] = text
        if len(self._recent) > ANSWER_CACHE:
            self._recent.popitem(last=False)

    async def ask(self, *, role: str, messages: list[dict[str, str]], purpose: str, strategy: str, item: str,
                  sample_index: int = 0, overrides: dict[str, Any] | None = None) -> tuple[str, str]:
        """Returns (query_id, text). Raises BudgetExhausted, QueryFailed, FatalRunError or RunStopping.

        An identical query (same provider, model, parameters, messages, sample index) is paid for
        once per run: a repeat gets the recorded answer, and a repeat that arrives while the first
        is still out waits for it."""
        ep = self.endpoints[role]
        params = {**ep.params, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        key = request_key(ep.teacher.provider, ep.model, params, messages, sample_index, purpose)
        qid = "q" + key[:19]
        while True:
            text = self._settled_text(qid)
            if text is not None:
                return qid, text
            busy = self._asking.get(qid)
            if busy is None:
                break
            await busy.wait()  # the first asker settles it (then we read its answer) or gives up
        if self.stopping:
            raise RunStopping("the run is stopping")
        done = self._asking[qid] = anyio.Event()
        try:
            text = await self._ask_new(ep, role, qid, key, params, messages, purpose, strategy, item)
        finally:
            del self._asking[qid]
            done.set()
        self._remember(qid, text)
        return qid, text

    async def _ask_new(self, ep: Endpoint, role: str, qid: str, key: str, params: dict[str, Any],
                       messages: list[dict[str, str]], purpose: str, strategy: str, item: str) -> str:
        request = ChatRequest(model=ep.model, messages=tuple(messages), **params)
        worst = self.worst_case(role, request)
        known = self.ledger.queries.get(qid)
        prior = known.attempts if known is not None else self.ledger.interrupted.get(qid)
        attempt = (prior or 0) + 1
        # The messages and parameters are recorded once per query, on its first reservation ever.
        self._reserve(qid, attempt, key, role, purpose, strategy, item, request, worst, first=prior is None)
        holding = True
        counted = 0  # failed attempts that count against max_attempts (429s do not)
        while True:
            try:
                if not holding:
                    self._reserve(qid, attempt, key, role, purpose, strategy, item, request, worst, first=False)
                    holding = True
                completion = await self._attempt(ep, qid, attempt, request, worst)
            except TeacherError as err:
                if err.maybe_billed:
                    holding = False
                if err.kind is FailureKind.AUTH:
                    self._abandon(qid, holding, f"authentication failed: {err.message}")
                    raise FatalRunError(f"the {role} rejected our credentials: {err.message}") from err
                if err.kind is FailureKind.RATE_LIMITED and "insufficient_quota" in (err.body_excerpt or ""):
                    self._abandon(qid, holding, f"no quota left: {err.message}")
                    raise FatalRunError(f"the {role} account has no quota left: {err.message}") from err
                limited = err.kind is FailureKind.RATE_LIMITED
                if not limited:
                    counted += 1
                retry = (attempt < ep.rate_limited_cap()) if limited else ep.retry.should_retry(err.kind, counted)
                if not retry:
                    reason = (f"{err.kind.value} after {attempt} attempt(s): {err.message}")
                    self._abandon(qid, holding, reason)
                    if ep.breaker.opened_count >= ep.max_breaker_trips:
                        raise FatalRunError(f"the {role} keeps failing ({reason}); stopping") from err
                    raise QueryFailed(reason) from err
                await anyio.sleep(ep.retry.delay(max(1, counted), err.retry_after, self.rng))
                attempt += 1
                if ep.breaker.opened_count >= ep.max_breaker_trips:
                    self._abandon(qid, holding, f"{err.kind.value}: teacher unavailable")
                    raise FatalRunError(f"the {role} did not recover after {ep.breaker.opened_count} "
                                        f"pauses ({err.kind.value}: {err.message}); stopping") from err
                if self.stopping:
                    self._abandon(qid, holding, "the run stopped before a retry")
                    raise RunStopping("the run is stopping") from err
                if not holding:
                    why = self.ledger.headroom(role, strategy, worst)
                    if why is not None:
                        self._abandon(qid, False, f"budget cannot cover a retry ({why})")
                        raise BudgetExhausted(why) from err
                continue
            return completion.texts[0] if completion.texts else ""

    def _abandon(self, qid: str, holding: bool, reason: str) -> None:
        self.recorder.emit(QueryAbandoned(query_id=qid, reason=reason))

    async def _attempt(self, ep: Endpoint, qid: str, attempt: int, request: ChatRequest,
                       worst: Amount) -> Completion:
        est = worst.input_tokens + worst.output_tokens
        await ep.breaker.wait_ready()
        async with ep.concurrency.slot():
            await ep.limiter.acquire(est)
            if self.stopping:
                self._abandon(qid, True, "the run stopped before this query was sent")
                raise RunStopping("the run is stopping")
            slot = ep.shaper.slot(anyio.current_time()) if ep.shaper is not None else None
            self.recorder.emit(QueryDispatched(query_id=qid, attempt=attempt))
            await self.recorder.flush()  # recorded before it is sent
            if slot is not None:
                await ep.shaper.wait(slot)  # type: ignore[union-attr]  # commit jitter stays off the wire
            started = time.monotonic()
            try:
                with anyio.fail_after(ep.timeout_s):
                    completion = await ep.teacher.complete(request)
            except TimeoutError:
                err = TeacherError(FailureKind.TIMEOUT, f"no answer within {ep.timeout_s:g}s", maybe_billed=True)
                self._failed(ep, qid, attempt, err, est)
                raise err from None
            except TeacherError as err:
                self._failed(ep, qid, attempt, err, est)
                raise
            except anyio.get_cancelled_exc_class():
                # The run is being torn down with this request out: the provider may bill it, so
                # the ledger keeps its worst case now rather than leaving the attempt open.
                err = TeacherError(FailureKind.CONNECTION, "cancelled while in flight (the run stopped)",
                                   maybe_billed=True)
                self.recorder.emit(AttemptFailed(query_id=qid, attempt=attempt, kind=err.kind.value,
                                                 maybe_billed=True, message=err.message))
                raise
            except Exception as exc:  # a provider bug must not lose the accounting
                err = TeacherError(FailureKind.SERVER_ERROR, f"{type(exc).__name__}: {exc}", maybe_billed=True)
                self._failed(ep, qid, attempt, err, est)
                raise err from exc
        latency = time.monotonic() - started
        usage = completion.usage
        usd = ep.price.cost(usage.input_tokens, usage.output_tokens) if ep.price else 0.0
        self.recorder.emit(QuerySettled(
            query_id=qid, attempt=attempt,
            actual=Cost(queries=request.n, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                        usd=usd),
            text=completion.texts[0] if completion.texts else "",
            finish_reason=completion.finish_reasons[0] if completion.finish_reasons else None,
            latency_s=round(latency, 4),
        ))
        ep.on_success(est, usage.input_tokens + usage.output_tokens, completion.rate_limits)
        return completion

    def _failed(self, ep: Endpoint, qid: str, attempt: int, err: TeacherError, est: int) -> None:
        self.recorder.emit(AttemptFailed(
            query_id=qid, attempt=attempt, kind=err.kind.value, maybe_billed=err.maybe_billed,
            message=err.message[:300], status=err.status, retry_after=err.retry_after,
            body_excerpt=err.body_excerpt))
        ep.on_failure(err, est)
