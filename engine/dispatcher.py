"""Dispatch of one query: reserve, pace, send, record, retry.

The pieces each live in their own module (engine/scheduler/: limiter, retry policy, circuit
breaker, adaptive concurrency); this module only wires them to the ledger and the event log in the
one order that keeps the invariants: reserve -> record dispatch durably -> send -> record outcome.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..store.hashing import canonical
from .events import AttemptFailed, Cost, QueryAbandoned, QueryDispatched, QueryReserved, QuerySettled
from .ledger import Amount, Ledger
from .pricing import ModelPrice
from .recorder import Recorder
from .scheduler import AdaptiveConcurrency, CircuitBreaker, RateLimiter, RetryPolicy
from .strategy import BudgetExhausted, QueryFailed
from .teacher import ChatRequest, Completion, FailureKind, Teacher, TeacherError


class FatalRunError(RuntimeError):
    """Something no retry can fix (bad credentials, a teacher that never recovers): stop the run."""


@dataclass
class Endpoint:
    """A model serving one or more roles, with its own pacing and failure handling."""

    teacher: Teacher
    model: str
    params: dict[str, Any]
    limiter: RateLimiter
    concurrency: AdaptiveConcurrency
    breaker: CircuitBreaker
    retry: RetryPolicy
    price: ModelPrice | None
    timeout_s: float
    max_breaker_trips: int = 6


def request_key(provider: str, model: str, params: dict[str, Any], messages: list[dict[str, str]],
                sample_index: int) -> str:
    """Identity of a query: same provider, model, parameters, messages and sample index = same query."""
    blob = canonical({"p": provider, "m": model, "params": params, "msgs": messages, "i": sample_index})
    return hashlib.sha256(blob).hexdigest()


@dataclass
class Dispatcher:
    recorder: Recorder
    ledger: Ledger
    endpoints: dict[str, Endpoint]
    # Settled texts of unfinished items, filled at resume; other repeats are looked up in the store.
    answered: dict[str, str] = field(default_factory=dict)
    lookup_settled: Any = None  # callable(query_id) -> str | None
    rng: random.Random = field(default_factory=random.Random)

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

    async def ask(self, *, role: str, messages: list[dict[str, str]], purpose: str, strategy: str, item: str,
                  sample_index: int = 0, overrides: dict[str, Any] | None = None) -> tuple[str, str]:
        """Returns (query_id, text). Raises BudgetExhausted, QueryFailed or FatalRunError."""
        ep = self.endpoints[role]
        params = {**ep.params, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        key = request_key(ep.teacher.provider, ep.model, params, messages, sample_index)
        qid = "q" + key[:19]
        if self.ledger.is_settled(qid):  # identical query already paid for in this run
            text = self.answered.get(qid)
            if text is None and self.lookup_settled is not None:
                text = self.lookup_settled(qid)
            if text is not None:
                return qid, text
        request = ChatRequest(model=ep.model, messages=tuple(messages), **params)
        worst = self.worst_case(role, request)
        attempt = self.ledger.queries[qid].attempts + 1 if qid in self.ledger.queries else 1
        self._reserve(qid, attempt, key, role, purpose, strategy, item, request, worst,
                      first=qid not in self.ledger.queries)
        holding = True
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
                if not ep.retry.should_retry(err.kind, attempt):
                    reason = (f"{err.kind.value} after {attempt} attempt(s): {err.message}")
                    self._abandon(qid, holding, reason)
                    if ep.breaker.opened_count >= ep.max_breaker_trips:
                        raise FatalRunError(f"the {role} keeps failing ({reason}); stopping") from err
                    raise QueryFailed(reason) from err
                await anyio.sleep(ep.retry.delay(attempt, err.retry_after, self.rng))
                attempt += 1
                if ep.breaker.opened_count >= ep.max_breaker_trips:
                    self._abandon(qid, holding, f"{err.kind.value}: teacher unavailable")
                    raise FatalRunError(f"the {role} did not recover after {ep.breaker.opened_count} "
                                        f"pauses ({err.kind.value}: {err.message}); stopping") from err
                if not holding:
                    why = self.ledger.headroom(role, strategy, worst)
                    if why is not None:
                        self._abandon(qid, False, f"budget cannot cover a retry ({why})")
                        raise BudgetExhausted(why) from err
                continue
            return qid, completion.texts[0] if completion.texts else ""

    def _abandon(self, qid: str, holding: bool, reason: str) -> None:
        self.recorder.emit(QueryAbandoned(query_id=qid, reason=reason))

    async def _attempt(self, ep: Endpoint, qid: str, attempt: int, request: ChatRequest,
                       worst: Amount) -> Completion:
        est = worst.input_tokens + worst.output_tokens
        await ep.breaker.wait_ready()
        async with ep.concurrency.slot():
            await ep.limiter.acquire(est)
            self.recorder.emit(QueryDispatched(query_id=qid, attempt=attempt))
            await self.recorder.flush()  # recorded before it is sent
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
        ep.limiter.settle(est, usage.input_tokens + usage.output_tokens)
        if completion.rate_limits is not None:
            ep.limiter.update_from_headers(completion.rate_limits)
        ep.breaker.record_success()
        ep.concurrency.on_success()
        return completion

    def _failed(self, ep: Endpoint, qid: str, attempt: int, err: TeacherError, est: int) -> None:
        self.recorder.emit(AttemptFailed(
            query_id=qid, attempt=attempt, kind=err.kind.value, maybe_billed=err.maybe_billed,
            message=err.message[:300], status=err.status, retry_after=err.retry_after,
            body_excerpt=err.body_excerpt))
        if err.kind is FailureKind.RATE_LIMITED:
            if err.retry_after:
                ep.limiter.pause_for(err.retry_after)
            ep.concurrency.on_rate_limited()
            if err.rate_limits is not None:
                ep.limiter.update_from_headers(err.rate_limits)
            if not err.maybe_billed:
                ep.limiter.settle(est, 0)
        else:
            ep.breaker.record_failure()
