"""One attempt on the wire: pace, record the dispatch durably, send, record the outcome.

The dispatcher decides *what* to ask and whether to try again; this part does one attempt for one
request - which may carry several queries (k samples of a prompt as one `n=k` call) - and tells
the endpoint's scheduler parts (limiter, rate policy, breaker, concurrency) what happened.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from ..api import ChatRequest, Completion
from ..errors import FailureKind, PluginFailed, RunStopping, TeacherError
from ..ledger.events import (AttemptFailed, QueryAbandoned, QueryDispatched, QuerySettled, RateAdjusted, RunWarning,
                             plain_cost)
from ..ledger.ledger import Amount
from ..redact import one_line
from ..scheduler.limiter import Tokens
from .eventloop import time_limit
from .samples import Member, output_split, shares, split_evenly
from .teacher_contract import checked_completion, raised
from .usage_check import fault_error, fault_event

if TYPE_CHECKING:
    from ..ledger.journal import Journal
    from ..scheduler.endpoint import Endpoint


class Sender:
    """The attempt half of the Dispatcher (a mixin: it needs `recorder` and `stopping`)."""

    recorder: "Journal"
    stopping: bool

    def note_finish(self, qid: str, reason: str | None) -> None: ...

    def _cancelled(self, members: list[Member], maybe_billed: bool, message: str) -> None:
        """The attempt's end when the run's teardown cancels it: billed or not, as far as it got."""
        for m in members:
            self.recorder.emit(AttemptFailed(query_id=m.qid, attempt=m.attempt, kind="connection",
                                             maybe_billed=maybe_billed, message=message))

    def _abandon(self, qid: str, holding: bool, reason: str) -> None:
        self.recorder.emit(QueryAbandoned(query_id=qid, reason=reason))

    async def _attempt(self, ep: "Endpoint", members: list[Member], request: ChatRequest,
                       prompt_bound: int) -> dict[str, str]:
        """Send `request` (n = len(members)) once; settle every member it answered and return
        their texts by query id. Raises TeacherError (recorded) or RunStopping."""
        # What the provider counts against its token limits: the prompt and every completion's cap
        # (a tokens-per-minute limit counts both; Anthropic's input and output limits one each).
        cap = request.max_tokens * len(members)
        est = Tokens(prompt_bound + cap, prompt_bound, cap)
        shared = members[0].qid if len(members) > 1 else None
        await ep.breaker.wait_ready()
        async with ep.concurrency.slot():
            await ep.limiter.acquire(est)
            if self.stopping:
                for m in members:
                    self._abandon(m.qid, True, "the run stopped before this query was sent")
                raise RunStopping("the run is stopping")
            shaper = ep.rate.shaper
            slot = shaper.slot(anyio.current_time()) if shaper is not None else None
            for m in members:
                self.recorder.emit_plain(QueryDispatched, query_id=m.qid, attempt=m.attempt, request=shared)
            try:
                await self.recorder.flush()  # recorded before it is sent
                if slot is not None:
                    await shaper.wait(slot)  # type: ignore[union-attr]  # commit jitter stays off the wire
            except anyio.get_cancelled_exc_class():
                # The run stopped (a fatal error elsewhere) after the dispatch was recorded and before
                # the send: the attempt surely never went out, and its record must say how it ended.
                self._cancelled(members, False, "not sent: the run stopped before its send")
                raise
            if self.stopping:  # a stop signal came while the dispatch was being recorded: not sent
                self._cancelled(members, False, "not sent: the run stopped before its send")
                for m in members:
                    self._abandon(m.qid, True, "the run stopped before this query was sent")
                raise RunStopping("the run is stopping")
            ep.on_sent(est)
            started = time.monotonic()
            limit = request.timeout_s or ep.timeout_s
            try:
                async with time_limit(limit):
                    completion = checked_completion(await ep.teacher.complete(request), ep.who)
            except TimeoutError:
                err = TeacherError(FailureKind.TIMEOUT, f"no answer within {limit:g}s", maybe_billed=True)
                self._failed(ep, members, err, est, started)
                raise err from None
            except TeacherError as err:
                self._failed(ep, members, err, est, started)
                raise
            except anyio.get_cancelled_exc_class():
                # The run is being torn down with this request out: the provider may bill it, so
                # the ledger keeps its worst case now rather than leaving the attempt open.
                self._cancelled(members, True, "cancelled while in flight (the run stopped)")
                raise
            except Exception as exc:  # a bug in the teacher: the accounting kept (it may have been sent), then stop
                err = TeacherError(FailureKind.SERVER_ERROR, f"{type(exc).__name__}: {one_line(str(exc), 300)}",
                                  maybe_billed=True)
                self._failed(ep, members, err, est, started)
                if isinstance(exc, PluginFailed):  # a reply that breaks the contract (teacher_contract)
                    raise
                raise raised(ep.who, exc) from exc
        latency = time.monotonic() - started
        usage = completion.usage
        worst = Amount(len(members), prompt_bound, cap)
        fault = fault_event(members[0].qid, members[0].attempt, usage, worst,
                            ep.price.cost(usage.input_tokens, usage.output_tokens) if ep.price else 0.0)
        if fault is not None:  # recorded before the settlement it explains
            self.recorder.emit(fault)
        texts = self._settle(ep, members, request.max_tokens, completion, latency, shared)
        ep.answered += 1
        # As counted: the output limit corrected to what was written, cache reads not input (Anthropic).
        counted = Tokens(usage.input_tokens + cap, max(0, usage.input_tokens - usage.cached_input_tokens),
                         usage.output_tokens)
        self._note(ep, ep.on_success(est, counted, completion.rate_limits, latency))
        if fault is not None:  # settled at what it reported (that is what will be billed), then stop
            raise fault_error(ep.teacher.provider, ep.model, fault)
        return texts

    def _settle(self, ep: "Endpoint", members: list[Member], max_tokens: int, completion: Completion,
                latency: float | None, shared: str | None) -> dict[str, str]:
        """Settle each member the completion answered at its share (used by batches too, which know
        no latency); members it left unanswered (a provider that ignores `n`) are released."""
        usage = completion.usage
        texts = list(completion.texts) or [""]
        reasons = list(completion.finish_reasons)
        answered = members[: len(texts)]
        if len(answered) == 1:
            amounts = shares(usage.input_tokens, [usage.output_tokens], ep.price, usage.cached_input_tokens)
        else:
            amounts = shares(usage.input_tokens, output_split(usage.output_tokens, texts[: len(answered)],
                                                              max_tokens), ep.price, usage.cached_input_tokens)
        cached = split_evenly(usage.cached_input_tokens, len(answered))
        whole = ({"request": shared, "n": len(answered), "input_tokens": usage.input_tokens,
                  "output_tokens": usage.output_tokens} if shared is not None else None)
        out: dict[str, str] = {}
        for i, (m, amount) in enumerate(zip(answered, amounts)):
            out[m.qid] = texts[i]
            self.note_finish(m.qid, reasons[i] if i < len(reasons) else None)
            self.recorder.emit_plain(
                QuerySettled, query_id=m.qid, attempt=m.attempt, actual=plain_cost(**amount.as_dict()), text=texts[i],
                finish_reason=reasons[i] if i < len(reasons) else None,
                latency_s=round(latency, 4) if latency is not None else None, shared=whole,
                cached_input_tokens=cached[i])
        for m in members[len(answered):]:  # a server that ignores `n`: the rest were never answered
            ep.supports_n = False
            self.recorder.emit(AttemptFailed(query_id=m.qid, attempt=m.attempt, kind="bad_request", maybe_billed=False,
                                             message=f"asked for {len(members)} samples, got {len(answered)}"))
            self._abandon(m.qid, True, "the provider ignored n; asked again on its own")
        return out

    def _split(self, ep: "Endpoint", members: list[Member]) -> list[Member]:
        """`n` made a request larger than the provider's token limit takes (nothing was billed):
        from now on half as many samples go in one request. Every member's reservation is
        released, since a smaller group's worst case per sample is larger; the first half is
        reserved and asked again now, the rest on their own."""
        keep = max(1, len(members) // 2)
        ep.max_n = keep
        for m in members:
            self._abandon(m.qid, True, f"{len(members)} samples in one request were too large for the "
                                       f"provider's token limit; asked again at most {keep} to a request")
        return members[:keep]

    def _failed(self, ep: "Endpoint", members: list[Member], err: TeacherError, est: Tokens, started: float) -> None:
        for m in members:
            self.recorder.emit(AttemptFailed(
                query_id=m.qid, attempt=m.attempt, kind=err.kind.value, maybe_billed=err.maybe_billed,
                message=one_line(err.message, 300), status=err.status, retry_after=err.retry_after,
                body_excerpt=err.body_excerpt))
        decision = ep.on_failure(err, est, time.monotonic() - started)
        if decision is not None:
            self._note(ep, decision.note, decision.pause_s, decision.pauses)

    def _note(self, ep: "Endpoint", note: str | None, pause_s: float = 0.0, pauses: int | None = None) -> None:
        """A pacing change users should see: recorded as an event (the live view shows the last).
        A configured limit the provider's announced one overruled is also a run warning, said once:
        the config is wrong for this provider, and the user should see it where warnings are seen
        (the live view, `show`); it comes with a note, so a success with none costs nothing more."""
        if note is None:
            return
        overruled = ep.rate.take_overruled()
        if overruled is not None:
            self.recorder.emit(RunWarning(kind="limit_above_provider", message=(
                f"[{ep.section}] {ep.model}: {overruled} (lower [limits] in the config to match)")))
        lim = ep.limiter
        ep.last_note = note
        self.recorder.emit(RateAdjusted(model=ep.model, note=note, rpm=lim.current_rpm, tpm=lim.current_tpm,
                                        factor=round(lim.factor, 4), pause_s=round(pause_s, 3), pauses=pauses))

    def say_unsaid_pauses(self, ep: "Endpoint") -> None:
        """At the run's end: the provider's pauses since the last note, so the count of pauses is whole."""
        n = ep.rate.take_unsaid_pauses()
        if n:
            self._note(ep, f"paused {n} more time{'s' if n > 1 else ''} for the provider's retry-after since the "
                           "last note", 0.0, n)
