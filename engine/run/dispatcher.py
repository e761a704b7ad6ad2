"""Dispatch of one query: reserve, pace, send, record, retry.

The pieces each live in their own module (engine/scheduler/: limiter, rate policy, retry policy,
circuit breaker, adaptive concurrency, and the endpoint that decides how they react to an
outcome; run/sending.py: one attempt; run/retrying.py: whether and when another); this module
wires them to the ledger and the event log in the one order that keeps the invariants:
reserve -> record dispatch durably -> send -> record outcome.

Queries that differ only in their sample index (k answers to one prompt) may go out as one
request with `n=k` when the provider supports it (run/samples.py splits its cost), and with
`[teacher] batch = true` queries go out through the provider's batch API (run/batching.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping


from ...store.hashing import canonical
from ..api import ChatRequest
from ..errors import BudgetExhausted, FailureKind, RunStopping, TeacherError
from ..ledger.events import Cost, QueryReserved, QueryReused, RunWarning, plain_cost
from ..ledger.journal import Journal
from ..ledger.ledger import Amount, Ledger
from ..scheduler.endpoint import Endpoint
from .admission import Admission
from .samples import MAX_N, Member, worst_shares
from .retrying import Retrier
from .sending import Sender
from .teacher_contract import prompt_bound

__all__ = ["Dispatcher", "request_key"]

# How many settled answers stay in memory for repeats of the same query (older ones are read back
# from the store): enough for any verifier's look-back, small enough that memory stays flat.
ANSWER_CACHE = 4096
_SHA256 = hashlib.sha256()


def request_key(provider: str, model: str, params: dict[str, Any], messages: list[dict[str, str]],
                sample_index: int, purpose: str = "", replicate: int = 0) -> str:
    """Identity of a query: same provider, model, parameters, messages, sample index, purpose and
    replicate = same query. Purpose is part of it so that, say, a verifier's k-th vote is never the
    strategy's k-th answer; the replicate so that an experiment's repeats are independent samples
    (replicate 0 leaves the identity as it always was)."""
    ident: dict[str, Any] = {"p": provider, "m": model, "params": params, "msgs": messages, "i": sample_index,
                             "why": purpose}
    if replicate:
        ident["rep"] = replicate
    h = _SHA256.copy()  # (a new sha256() looks its algorithm up in OpenSSL each time: a copy does not)
    h.update(canonical(ident))
    return h.hexdigest()


# (source run id, source seq, payload of its query_settled event) of an identical query settled at
# the endpoint of a config section (see run/reuse.py).
Reusable = Callable[[str, str], "tuple[str, int, dict[str, Any]] | None"]


@dataclass
class Dispatcher(Retrier, Sender):
    recorder: Journal
    ledger: Ledger
    endpoints: dict[str, Endpoint]
    admission: Admission  # the budget check and the worst case of a request
    # Settled texts of unfinished items, filled at resume; other repeats are looked up in the store.
    answered: dict[str, str] = field(default_factory=dict)
    # Finish reasons ("stop", "length", ...) of settled queries, by query id: those recorded before a
    # resume, and those the store lookup found; this session's own are in `_finish`.
    finish_reasons: dict[str, str | None] = field(default_factory=dict)
    lookup_settled: Callable[[str], str | None] | None = None
    # Answers of identical queries settled by other runs of the store (None: never reuse).
    find_reusable: Reusable | None = None
    replicate: int = 0
    rng: random.Random = field(default_factory=random.Random)
    stopping: bool = False  # set by the runner on a signal: start nothing new
    # Recent settled answers by query id (bounded), and queries being asked right now: a second
    # asker of the same query waits for the first instead of paying for it again.
    _recent: OrderedDict[str, str] = field(default_factory=OrderedDict)
    # (asyncio's Event, not anyio's: runs are always driven on asyncio, and one is made per query)
    _asking: dict[str, asyncio.Event] = field(default_factory=dict)
    _finish: OrderedDict[str, str | None] = field(default_factory=OrderedDict)

    def _settled_text(self, qid: str) -> str | None:
        if not self.ledger.is_settled(qid):
            return None
        text = self._recent.get(qid)
        if text is None:
            text = self.answered.get(qid)
        if text is None and self.lookup_settled is not None:
            text = self.lookup_settled(qid)
        return text

    def finish_reason(self, qid: str) -> str | None:
        """Why the teacher stopped writing this query's reply ("length": cut off at max_tokens)."""
        if qid in self._finish:
            return self._finish[qid]
        return self.finish_reasons.get(qid)

    def note_finish(self, qid: str, reason: str | None) -> None:
        """Called where a query settles (one attempt, or a batch's results)."""
        self._finish[qid] = reason
        if len(self._finish) > ANSWER_CACHE:
            self._finish.popitem(last=False)

    def remember(self, qid: str, text: str) -> None:
        self._recent[qid] = text
        if len(self._recent) > ANSWER_CACHE:
            self._recent.popitem(last=False)

    def _member(self, ep: Endpoint, params: dict[str, Any], messages: list[dict[str, str]], index: int,
                purpose: str, item: str) -> Member:
        key = request_key(ep.teacher.provider, ep.model, params, messages, index, purpose, self.replicate)
        return Member("q" + key[:19], key, index, item)

    def _siblings(self, ep: Endpoint, params: dict[str, Any], messages: list[dict[str, str]], purpose: str,
                  item: str, index: int, group: Mapping[int, str] | Iterable[int] | None) -> list[Member]:
        """The other samples of this prompt that may share its request: not settled, not being
        asked, not open in the ledger (at most MAX_N in all)."""
        cap = MAX_N if ep.max_n is None else ep.max_n
        if group is None or not ep.supports_n or cap <= 1:
            return []
        items = group if isinstance(group, Mapping) else {i: item for i in group}
        if index not in items:
            return []
        out: list[Member] = []
        for i, it in items.items():
            if i == index or len(out) >= cap - 1:
                continue
            m = self._member(ep, params, messages, i, purpose, it)
            if not (self.ledger.is_settled(m.qid) or m.qid in self._asking or m.qid in self.ledger.queries
                    or (self.find_reusable is not None and self.find_reusable(m.qid, ep.section) is not None)):
                out.append(m)  # (one the store can answer is left to be reused when it is asked)
        return out

    async def ask(self, *, role: str, messages: list[dict[str, str]], purpose: str, strategy: str, item: str,
                  sample_index: int = 0, overrides: dict[str, Any] | None = None,
                  group: Mapping[int, str] | Iterable[int] | None = None) -> tuple[str, str, bool]:
        """Returns (query_id, text, fresh): fresh is False when the answer is one this run already
        held (settled before, or being asked by another item right now), which took nothing from the
        budget. Raises BudgetExhausted, QueryFailed, FatalRunError or RunStopping.

        An identical query (same provider, model, parameters, messages, sample index, purpose,
        replicate) is paid for once per store: a repeat gets the recorded answer (from another run: a
        `query_reused` event), and a repeat that arrives while the first is still out waits for it. `group` names the sample indices of this prompt (optionally with
        the plan item each belongs to) that may be asked together in one `n` request."""
        ep = self.endpoints[role]
        params = {**ep.params, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        primary = self._member(ep, params, messages, sample_index, purpose, item)
        qid = primary.qid
        while True:
            text = self._settled_text(qid)
            if text is not None:
                return qid, text, False
            busy = self._asking.get(qid)
            if busy is None:
                break
            await busy.wait()  # the first asker settles it (then we read its answer) or gives up
        if self.stopping:
            raise RunStopping("the run is stopping")
        reused = self._reuse(ep, role, primary, params, messages, purpose, strategy)
        if reused is not None:
            self.remember(qid, reused)
            return qid, reused, True
        members = [primary, *self._siblings(ep, params, messages, purpose, item, sample_index, group)]
        done = asyncio.Event()
        for m in members:
            self._asking[m.qid] = done
        try:
            if ep.batch is not None:
                texts = await ep.batch.ask(self, ep, role, members, params, messages, purpose, strategy)
            else:
                texts = await self._ask_new(ep, role, members, params, messages, purpose, strategy)
        finally:
            for m in members:
                del self._asking[m.qid]
            done.set()
        for q, t in texts.items():
            self.remember(q, t)
        return qid, texts[qid], True

    def _reuse(self, ep: Endpoint, role: str, m: Member, params: dict[str, Any], messages: list[dict[str, str]],
               purpose: str, strategy: str) -> str | None:
        """Serve the query from another run of the store when it settled there: nothing is sent or
        paid, and it counts toward this run's budget as if bought (so the run's data does not depend
        on what the store already held), behind the paid path's own worst-case check. Synchronous
        on purpose: between the item's pledge being released and this query taking its budget there
        must be no await, or admission would see the budget free and start items it cannot finish."""
        if self.find_reusable is None:
            return None
        found = self.find_reusable(m.qid, ep.section)
        if found is None:
            return None
        source_run, source_seq, settled = found
        why = self.admission.check(role, strategy, self.admission.worst_case(role, ChatRequest(
            model=ep.model, messages=tuple(messages), **params)))
        if why is not None:
            raise BudgetExhausted(why)
        text, finish = settled.get("text", ""), settled.get("finish_reason")
        self.recorder.emit(QueryReused(
            query_id=m.qid, key=m.key, role=role, purpose=purpose, strategy=strategy, item=m.item,
            provider=ep.teacher.provider, model=ep.model, source_run=source_run, source_seq=source_seq,
            actual=_at_this_price(ep, settled), text=text, finish_reason=finish))
        self.note_finish(m.qid, finish)
        return text

    def reserve(self, ep: Endpoint, role: str, purpose: str, strategy: str, base: ChatRequest,
                members: list[Member], worsts: list[Amount]) -> None:
        """Record each member's reservation (the ledger applies it at once); messages and
        parameters go with a query's first reservation ever."""
        params = (base.model_dump(mode="json", exclude={"messages", "model"}, exclude_none=True)
                  if any(m.first for m in members) else None)  # (dumping costs; repeats record none)
        for m, worst in zip(members, worsts):
            self.recorder.emit_plain(
                QueryReserved, query_id=m.qid, attempt=m.attempt, key=m.key, role=role, purpose=purpose,
                strategy=strategy, item=m.item, provider=ep.teacher.provider, model=ep.model,
                worst=plain_cost(**worst.as_dict()), messages=[dict(x) for x in base.messages] if m.first else None,
                params=params if m.first else None)
            m.first, m.holding, m.worst = False, True, worst

    def _fit(self, ep: Endpoint, role: str, strategy: str, base: ChatRequest, prompt: int,
             members: list[Member]) -> tuple[list[Member], list[Amount]]:
        """The most members (in order) whose request's worst case the budget can hold now, and
        their worst-case shares. BudgetExhausted when not even the first fits."""
        why = None
        for k in range(len(members), 0, -1):
            worsts = worst_shares(prompt, base.max_tokens, k, ep.price)
            total = Amount()
            for w in worsts:
                total.add(w)
            why = self.admission.check(role, strategy, total)
            if why is None:
                return members[:k], worsts
        raise BudgetExhausted(why)

    def _start(self, ep: Endpoint, members: list[Member]) -> None:
        """Number each member's attempt, continuing a count an earlier session began."""
        for m in members:
            known = self.ledger.queries.get(m.qid)
            prior = known.attempts if known is not None else self.ledger.interrupted.get(m.qid)
            m.attempt = (prior or 0) + 1
            m.first = prior is None

    async def _ask_new(self, ep: Endpoint, role: str, members: list[Member], params: dict[str, Any],
                       messages: list[dict[str, str]], purpose: str, strategy: str) -> dict[str, str]:
        base = ChatRequest(model=ep.model, messages=tuple(messages), **params)
        prompt = prompt_bound(ep.teacher, base, ep.who)
        self._start(ep, members)
        members, worsts = self._fit(ep, role, strategy, base, prompt, members)
        self.reserve(ep, role, purpose, strategy, base, members, worsts)
        counted = timeouts = 0  # failed attempts that count against max_attempts (429s do not); timed out
        try:
            while True:
                update: dict[str, Any] = {"n": len(members)} if len(members) > 1 else {}
                if timeouts:
                    update["timeout_s"] = ep.timeout_after(timeouts)
                request = base.model_copy(update=update) if update else base
                try:
                    return await self._attempt(ep, members, request, prompt)
                except TeacherError as err:
                    if err.kind is FailureKind.TOO_LARGE and len(members) > 1:
                        members = self._split(ep, members)  # fewer samples in one request, at once
                        self._start(ep, members)
                        members, worsts = self._fit(ep, role, strategy, base, prompt, members)
                        self.reserve(ep, role, purpose, strategy, base, members, worsts)
                        continue
                    limited = err.kind is FailureKind.RATE_LIMITED
                    counted += not limited
                    if err.kind is FailureKind.TIMEOUT and err.maybe_billed:
                        timeouts += 1
                        self._said_slow(ep)
                    await self._after_failure(ep, role, members, err, counted, request.max_tokens)
                    for m in members:
                        m.attempt += 1
                        m.holding = m.holding and not err.maybe_billed
                    if not members[0].holding:  # possibly billed: a retry must reserve afresh
                        members = self._refit(ep, role, strategy, purpose, base, prompt, members, err)
        except asyncio.CancelledError:
            # The run is torn down (a fatal error elsewhere) while this query waits for a turn, a
            # retry or its answer: what was out is recorded by the attempt; each query then ends
            # abandoned, not left open for good (QA: a failed run's waiting queries stayed open).
            for m in members:
                self._abandon(m.qid, m.holding, "the run stopped before this query was answered")
            raise

    def _said_slow(self, ep: Endpoint) -> None:
        """The first timeout of an endpoint, told once: retries wait longer, and the config may want it."""
        if ep.slow_said:
            return
        ep.slow_said = True
        self.recorder.emit(RunWarning(kind="slow_teacher", message=(
            f"[{ep.section}] {ep.model}: no answer within timeout_s = {ep.timeout_s:g}s. A timed-out attempt may "
            f"be billed, so its retry waits longer (up to {ep.longest_timeout:g}s); if the model is this slow, "
            f"raise [{ep.section}] timeout_s")))

    def _refit(self, ep: Endpoint, role: str, strategy: str, purpose: str, base: ChatRequest, prompt: int,
               members: list[Member], err: TeacherError) -> list[Member]:
        try:
            kept, worsts = self._fit(ep, role, strategy, base, prompt, members)
        except BudgetExhausted as exc:
            for m in members:
                self._abandon(m.qid, False, f"budget cannot cover a retry ({exc})")
            raise exc from err
        for m in members[len(kept):]:
            self._abandon(m.qid, False, "budget cannot cover its share of a retry; asked again on its own")
        self.reserve(ep, role, purpose, strategy, base, kept, worsts)
        return kept


def _at_this_price(ep: Endpoint, settled: dict[str, Any]) -> Cost:
    """A reused answer's usage as the source settled it, in dollars at this run's price: the source's
    own dollars (none, from a run with no price) let a usd budget count it as free (QA: $2.31 spent
    against a $1 limit, and 12 rows where an empty store gave 2)."""
    actual = dict(settled.get("actual") or {})
    inp, out = int(actual.get("input_tokens", 0)), int(actual.get("output_tokens", 0))
    cached = int(settled.get("cached_input_tokens") or 0)
    actual["usd"] = ep.price.cost(inp, out, cached) if ep.price is not None else 0.0
    return Cost(**actual)
