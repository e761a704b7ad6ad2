"""The `Context` a strategy or verifier sees while it works on one plan item."""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Mapping, Protocol

from pydantic import ValidationError

from ..errors import BudgetExhausted, PluginFailed
from ..ledger.events import QuestionAdmitted, SampleRejected
from ..api import PlanItem, Seed, Task
from .admission import Admission
from .quality_gate import Problem, Reply, filtered, truncated


MAX_REFUSALS = 100  # asks an item may make after the budget refused one: then it is a plugin's endless loop


class ItemHost(Protocol):
    """What a context needs of the run around it (the Runner provides it; nothing here imports it)."""

    parts: Any  # .task, .seeds
    cfg: Any  # .run.seed
    admission: Admission  # routes a role to its endpoint; the item's pledge for a query ends as it is asked
    dispatcher: Any
    recorder: Any
    dedupe: Any
    gate: Any  # the run's QualityGate: counts repeated questions toward its warning


class CutOff(Exception):
    """An item's reply was cut off at max_tokens while [quality] rejects such samples: the item is
    rejected now, before anything more is asked for it (the teacher's answer to a rewrite that was
    cut short would be paid for and then rejected all the same)."""

    def __init__(self, reply: Reply, problem: Callable[[Reply], Problem] = truncated) -> None:
        self.problem: Problem = problem(reply)
        super().__init__(self.problem.reason)


class ItemContext:
    def __init__(self, runner: ItemHost, item: PlanItem) -> None:
        self._runner = runner
        self.item = item
        self.task: Task = runner.parts.task
        self.seeds: list[Seed] = runner.parts.seeds
        self.query_ids: list[str] = []
        self.roles: dict[str, str] = {}
        self.replies: list[Reply] = []  # every query asked, with its finish reason, in order
        self.rejected = False
        self.admitted_question: str | None = None
        self.fresh = 0  # queries this item took from the budget (not answers the run already held)
        self.fresh_bounded = 0  # of them, those some budget limit counts (see plan_guard.UnboundedSpendWatch)
        self.making_sample = False  # set while the strategy makes its sample (not while the verifier judges it)
        self.stop_on_cut_off = False  # and cut-off replies are rejected ([quality] keep_truncated is off)
        self.refused: BudgetExhausted | None = None  # the budget refused a query (the plugin may have caught it)
        self._refusals = 0

    async def ask(self, role: str, messages: list[dict[str, str]], *, purpose: str, sample_index: int = 0,
                  max_tokens: int | None = None, temperature: float | None = None,
                  group: Mapping[int, str] | Iterable[int] | None = None) -> str:
        self._stop_if_cut_off()
        runner = self._runner
        if role not in runner.parts.roles or not isinstance(messages, (list, tuple)):
            raise PluginFailed(self._misasked(role, messages))
        runner.admission.release(self.item, role)  # from here on the query's own reservation counts
        routed = runner.admission.route(role)
        try:
            qid, text, fresh = await runner.dispatcher.ask(
                role=routed, messages=messages, purpose=purpose, strategy=self.item.strategy,
                item=self.item.key, sample_index=sample_index,
                overrides={"max_tokens": max_tokens, "temperature": temperature}, group=group)
        except BudgetExhausted as exc:
            if self.refused is not None and self._refusals >= MAX_REFUSALS:  # caught, asked again, forever
                raise PluginFailed(f"{self._asker()} asked again after the budget refused it {MAX_REFUSALS} "
                                   "times; let BudgetExhausted propagate (the run then ends budget_exhausted)") from None
            self.refused = exc  # a plugin that catches it has still met the end of the budget
            self._refusals += 1
            raise
        except ValidationError as exc:  # the request the plugin's arguments make is not one
            raise PluginFailed(f"{self._asker()} gave ctx.ask() {_first_error(exc)}") from None
        self.fresh += fresh
        if fresh and runner.admission.ledger.spec.bounds(routed, self.item.strategy):
            self.fresh_bounded += fresh
        self.query_ids.append(qid)
        self.roles[qid] = role
        self.replies.append(Reply(qid, role, purpose, runner.dispatcher.finish_reason(qid), text))
        return text

    def _asker(self) -> str:
        return f"item {self.item.key!r} of strategy {self.item.strategy!r} (or its verifier)"

    def _misasked(self, role: str, messages: Any) -> str:
        """Why a request is refused before it is made. An undeclared role went to the teacher's
        model unannounced (a misspelt one too), outside the limits set for the role it meant."""
        if role not in self._runner.parts.roles:
            return (f"{self._asker()} asked role {role!r}, which neither the strategy nor the verifier declares "
                    f"in its `roles` (this run's roles: {', '.join(self._runner.parts.roles)})")
        return (f"{self._asker()} gave ctx.ask() messages as {type(messages).__name__}; expected a list of "
                "{'role': ..., 'content': ...} dicts")

    def _stop_if_cut_off(self) -> None:
        """A reply the sample is made from that the gate would reject ends the item before anything
        more is asked for it: one cut off at max_tokens (unless kept), and one a content filter
        stopped (kept by no option: QA saw a filtered question admitted, answered, paid, then rejected)."""
        if not self.making_sample:
            return
        stopped = next((r for r in self.replies if r.finish_reason == "content_filter"), None)
        if stopped is not None:
            raise CutOff(stopped, filtered)
        if self.stop_on_cut_off:
            cut = next((r for r in self.replies if r.finish_reason == "length"), None)
            if cut is not None:
                raise CutOff(cut)

    def check_new_question(self, question: str) -> str | None:
        self._stop_if_cut_off()  # a question cut short is not indexed: a whole one like it may follow
        index = self._runner.dedupe
        if index is None:
            return None
        reason = index.check_and_add(question, f"question of {self.item.key}")
        self._runner.gate.observe_question(reason)
        if reason is None:
            self.admitted_question = question
            self._runner.recorder.emit(QuestionAdmitted(item=self.item.key, question=question))
        return reason

    def reject(self, reason: str, **details: Any) -> None:
        stage = details.pop("stage", "question")
        question = details.pop("question", None)
        self.rejected = True
        if self.refused is not None:  # passing the budget's refusal on: the item ends as refused, unrecorded
            return
        self._runner.recorder.emit(SampleRejected(
            item=self.item.key, strategy=self.item.strategy, stage=stage, reason=reason,
            details=details, question=question))

    def rng(self, *salt: Any) -> random.Random:
        return random.Random(f"{self._runner.cfg.run.seed}|{self.item.key}|{'|'.join(map(str, salt))}")


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "its arguments"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"a bad {loc}: {first['msg']}{more}"
