"""One plan item: the strategy's sample, then the engine's own checks and the verifier's verdict,
each recorded as it is decided."""

from __future__ import annotations

from typing import Any, Protocol

from .. import host
from ..api import PlanItem, Sample, Verdict
from ..errors import BudgetExhausted, PluginFailed, SynthledgerError
from ..ledger.event_base import EventBase
from ..ledger.events import SampleAccepted, SampleProposed, SampleRejected, is_plain_json
from ..ledger.journal import Journal
from ..plugin_faults import failure
from .context import CutOff, ItemContext, ItemHost
from .quality_gate import QualityGate, answer_reply


class ItemRunner(ItemHost, Protocol):
    """What producing an item needs beyond a context's own needs (the Runner provides it)."""

    gate: QualityGate
    endpoints: dict[str, Any]


async def produce(runner: ItemRunner, item: PlanItem, ctx: ItemContext) -> str:
    """Run `item` and record its sample and verdict; returns the outcome ("accepted" or "rejected").

    Raises what `ctx.ask` raises (BudgetExhausted, QueryFailed, RunStopping, FatalRunError): the
    runner decides what those mean for the item and the run. A strategy that returns what is not
    a Sample is a PluginFailed here, before the engine trips over it."""
    try:
        return await _produce(runner, item, ctx)
    finally:  # what was paid for counts toward the cut-off warning, however the item ended
        runner.gate.observe_replies(ctx.replies)


async def _produce(runner: ItemRunner, item: PlanItem, ctx: ItemContext) -> str:
    ctx.making_sample = True
    ctx.stop_on_cut_off = not runner.gate.keep_truncated  # the gate would reject the sample anyway
    try:
        sample = await runner.parts.strategy.run(item, ctx)
    except CutOff as cut:
        p = cut.problem
        runner.recorder.emit(SampleRejected(item=item.key, strategy=item.strategy, stage="quality", kind=p.kind,
                                            reason=p.reason, details=p.details))
        return "rejected"
    finally:
        ctx.making_sample = ctx.stop_on_cut_off = False  # the verifier's own replies (votes) are its to judge
    if sample is not None and not isinstance(sample, Sample):
        raise PluginFailed(f"strategy {item.strategy!r} returned {type(sample).__name__} from run() on item "
                           f"{item.key!r}; expected a Sample or None")
    if sample is not None and not (type(sample.question) is str and type(sample.answer) is str):
        wrong = "question" if type(sample.question) is not str else "answer"
        raise PluginFailed(f"strategy {item.strategy!r} returned a Sample from run() on item {item.key!r} whose "
                           f"{wrong} is {type(getattr(sample, wrong)).__name__}; expected str")
    if sample is None:
        if ctx.refused is not None:  # the strategy caught the budget's refusal and gave up the item
            raise ctx.refused
        if not ctx.rejected:
            runner.recorder.emit(SampleRejected(item=item.key, strategy=item.strategy, stage="parse",
                                                reason="strategy produced no sample"))
        return "rejected"
    return await _decide(runner, item, sample, ctx)


async def _decide(runner: ItemRunner, item: PlanItem, sample: Any, ctx: ItemContext) -> str:
    """Record the sample, then the engine's own checks (whole answer, not a copy), then the
    verifier's: the first that says no rejects it."""
    rec = runner.recorder
    sid = f"s-{item.key}"
    replies = list(ctx.replies)
    answer = answer_reply(replies)
    route = runner.admission.route
    models = {ctx.roles[q]: runner.endpoints[route(ctx.roles[q])].model for q in ctx.query_ids}
    _emit(rec, SampleProposed, _plain_sample(sample), sample_id=sid, item=item.key,
          strategy=sample.strategy or item.strategy, seed_id=sample.seed_id, question=sample.question,
          answer=sample.answer, reference=sample.reference, query_ids=list(ctx.query_ids),
          roles=dict(ctx.roles), models=models, meta=sample.meta,
          finish_reason=answer.finish_reason if answer else None,
          finish_reasons={r.query_id: r.finish_reason for r in replies},
          answer_query_id=answer.query_id if answer else None)
    problem = runner.gate.check(item.key, sample, replies)
    if problem is not None:
        _emit(rec, SampleRejected, type(sample.question) is str and is_plain_json(problem.details), sample_id=sid,
              item=item.key, strategy=item.strategy, stage="quality", kind=problem.kind, reason=problem.reason,
              details=problem.details, question=sample.question)
        return "rejected"
    n_before = len(ctx.query_ids)
    try:
        verdict = await runner.parts.verifier.verify(sample, ctx)
    except BudgetExhausted as exc:
        # Only after a kill: the attempts that were in flight count as spent (their outcome is
        # unknown), so a resumed run may not afford the verification its pledge once covered. The
        # paid answer gets a decision, not a dangling proposal: rejected, saying why.
        rec.emit(SampleRejected(sample_id=sid, item=item.key, strategy=item.strategy, stage="verification",
                                kind="budget", reason=f"budget exhausted before verification ({exc})",
                                question=sample.question))
        return "rejected"
    except SynthledgerError:
        raise
    except Exception as exc:  # the verifier's own code: named, not taken for the strategy's
        raise PluginFailed(failure(f"{_verifier(runner)} verify() on item {item.key!r}", exc)) from exc
    if not isinstance(verdict, Verdict):
        raise PluginFailed(f"{_verifier(runner)} returned {type(verdict).__name__} from verify() on item "
                           f"{item.key!r}; expected a Verdict")
    if verdict.accepted:
        _emit(rec, SampleAccepted, type(verdict.reason) is str and is_plain_json(verdict.details), sample_id=sid,
              reason=verdict.reason, details=verdict.details, query_ids=ctx.query_ids[n_before:])
        return "accepted"
    rec.emit(SampleRejected(sample_id=sid, item=item.key, strategy=item.strategy, stage="verification",
                            reason=verdict.reason, details=verdict.details, question=sample.question))
    return "rejected"


def _verifier(runner: ItemRunner) -> str:
    return host.get_host().describe("verifiers", runner.cfg.verifier.name)


def _plain_sample(sample: Sample) -> bool:
    """The strategy's sample is already what `SampleProposed` would dump (nearly always)."""
    return (type(sample.question) is str and type(sample.answer) is str and type(sample.strategy) is str
            and (sample.seed_id is None or type(sample.seed_id) is str)
            and (sample.reference is None or type(sample.reference) is str) and is_plain_json(sample.meta))


def _emit(rec: Journal, cls: type[EventBase], plain: bool, **values: Any) -> None:
    """A per-sample event without its model when a plugin's values need no checking or converting
    (validating and dumping was a twentieth of a zero-latency run's main thread); else the model,
    which converts what it can and refuses the rest, as before."""
    if plain:
        rec.emit_plain(cls, **values)
    else:
        rec.emit(cls(**values))
