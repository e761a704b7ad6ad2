"""Answer augmentation: more sampled answers to the seed questions themselves.

One teacher query per sample; the research finds it the best use of a small budget per seed.
The samples of one seed share a prompt, so where the teacher supports `n` they go out together as
one request (the prompt paid once, each sample still its own query in the ledger). To make that
possible the plan walks the seeds round-robin in blocks of `samples_per_request` rounds: every
seed gets its block before any seed gets the next one, so when the budget ends the plan early the
per-seed counts differ by at most one block (by at most one sample with `samples_per_request = 1`).
"""

from __future__ import annotations

from typing import ClassVar, Iterator

from pydantic import Field

from synthledger.engine.api import Context, PlanItem, Sample, Strategy

from .common import answer_prompt, round_robin, seed_reference
from .options import AnswerOptions


class AnswerAugmentation(Strategy):
    name: ClassVar[str] = "answer_augmentation"
    roles: ClassVar[tuple[str, ...]] = ("teacher",)

    class Options(AnswerOptions):
        # Sampling temperature must be > 0, or every answer to a seed would be the same.
        temperature: float = Field(default=0.7, gt=0.0, le=2.0)
        samples_per_seed: int | None = Field(default=None, ge=1)
        # Samples of one seed asked in one request (`n`); default: all of samples_per_seed, at
        # most 16, or 1 (strict round robin) when samples_per_seed is not set.
        samples_per_request: int | None = Field(default=None, ge=1, le=128)

    options: Options

    @property
    def block(self) -> int:
        o = self.options
        if o.samples_per_request is not None:
            return o.samples_per_request
        return min(o.samples_per_seed, 16) if o.samples_per_seed else 1

    def plan(self) -> Iterator[PlanItem]:
        salt = f"{self.name}:{self.random_seed}"
        g, cap = self.block, self.options.samples_per_seed
        for b, seed in round_robin(self.seeds, salt, None if cap is None else -(-cap // g)):
            for r in range(b * g, (b + 1) * g if cap is None else min((b + 1) * g, cap)):
                yield PlanItem(key=f"aa:{seed.id}:{r}", strategy=self.name, seed=seed, sample_index=r)

    async def run(self, item: PlanItem, ctx: Context) -> Sample | None:
        g, cap = self.block, self.options.samples_per_seed
        start = item.sample_index // g * g
        end = start + g if cap is None else min(start + g, cap)
        text = await ctx.ask(
            "teacher",
            answer_prompt(self.options.answer_template, item.seed.question, self.task),
            purpose="answer",
            sample_index=item.sample_index,
            temperature=self.options.temperature,
            max_tokens=self.options.max_tokens,
            group={r: f"aa:{item.seed.id}:{r}" for r in range(start, end)} if end - start > 1 else None,
        )
        if not text.strip():
            ctx.reject("teacher returned an empty answer", stage="answer")
            return None
        answer = text.strip()  # the stored answer, and the text the gate extracts from (one cached parse)
        return Sample(
            question=item.seed.question,
            answer=answer,
            seed_id=item.seed.id,
            strategy=item.strategy,
            reference=seed_reference(item.seed, self.task),
            meta={"final": self.task.extract(answer), "sample_index": item.sample_index},
        )
