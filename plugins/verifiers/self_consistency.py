"""Self-consistency: ask the teacher k more times and keep the sample only if its final answer is
the clear majority. Costs k teacher queries per sample, so the engine reserves them up front;
where the teacher supports `n` the k votes go out as one request (the prompt paid once)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from synthledger.engine.api import Context, Sample, Task, Verdict, Verifier
from synthledger.plugins.strategies.common import answer_prompt
from synthledger.plugins.strategies.options import AnswerOptions


def vote(own: str | None, others: list[str | None], task: Task, threshold: float) -> Verdict:
    """The decision, separate from the querying: `own` must be in the largest group of equivalent
    final answers (ties go to own's group), and that group must hold `threshold` of all votes."""
    finals = [own, *others]
    groups: list[list[int]] = []
    for i, final in enumerate(finals):
        if final is None:
            continue  # "no answer" never agrees with anything, not even another "no answer"
        for group in groups:
            if task.equivalent(finals[group[0]], final):
                group.append(i)
                break
        else:
            groups.append([i])
    total = len(finals)
    votes = {finals[g[0]]: len(g) for g in groups}
    details = {"votes": votes, "total": total, "own": own}
    if own is None:
        return Verdict(False, "sample has no final answer", details)
    top = max(groups, key=lambda g: (len(g), 0 in g))
    share = len(top) / total
    details.update(majority=finals[top[0]], share=round(share, 4))
    if 0 not in top:
        return Verdict(
            False, f"sample's answer {own} disagrees with majority {finals[top[0]]} ({len(top)}/{total})", details
        )
    if share < threshold:
        return Verdict(False, f"no clear majority: {own} has {len(top)}/{total} < {threshold:g}", details)
    return Verdict(True, f"majority {len(top)}/{total} agrees with {own}", details)


class SelfConsistency(Verifier):
    name: ClassVar[str] = "self_consistency"
    roles: ClassVar[tuple[str, ...]] = ("teacher",)

    class Options(AnswerOptions):
        k: int = Field(default=4, ge=1)
        threshold: float = Field(default=0.6, gt=0.0, le=1.0)
        temperature: float = Field(default=0.7, gt=0.0, le=2.0)

    options: Options

    def item_cost(self) -> dict[str, int]:
        return {"teacher": self.options.k}

    async def verify(self, sample: Sample, ctx: Context) -> Verdict:
        own = self.task.extract(sample.answer)
        if own is None:  # nothing to agree with: do not spend k queries finding that out
            return Verdict(False, "sample has no final answer", {"own": None})
        prompt = answer_prompt(self.options.answer_template, sample.question, self.task)
        others = []
        for i in range(1, self.options.k + 1):
            text = await ctx.ask(
                "teacher",
                prompt,
                purpose="verify",
                sample_index=i,
                temperature=self.options.temperature,
                max_tokens=self.options.max_tokens,
                group=range(1, self.options.k + 1),  # one `n=k` request where the teacher supports it
            )
            others.append(None if _stopped_short(ctx) else self.task.extract(text))
        return vote(own, others, self.task, self.options.threshold)


def _stopped_short(ctx: Context) -> bool:
    """The reply just asked was cut off at max_tokens or stopped by a content filter: the number its
    text ends on is not an answer (QA: "Combine them to get 105", cut off, was a vote for 105, and
    samples every reference agreed with were rejected for want of a majority)."""
    replies = getattr(ctx, "replies", None)
    return bool(replies) and replies[-1].finish_reason in ("length", "content_filter")
