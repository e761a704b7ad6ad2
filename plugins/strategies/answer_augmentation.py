"""Answer augmentation: more sampled answers to the seed questions themselves.

One teacher query per sample; the research finds it the best use of a small budget per seed.
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

    options: Options

    def plan(self) -> Iterator[PlanItem]:
        salt = f"{self.name}:{self.random_seed}"
        for r, seed in round_robin(self.seeds, salt, self.options.samples_per_seed):
            yield PlanItem(key=f"aa:{seed.id}:{r}", strategy=self.name, seed=seed, sample_index=r)

    async def run(self, item: PlanItem, ctx: Context) -> Sample | None:
        text = await ctx.ask(
            "teacher",
            answer_prompt(self.options.answer_template, item.seed.question, self.task),
            purpose="answer",
            sample_index=item.sample_index,
            temperature=self.options.temperature,
            max_tokens=self.options.max_tokens,
        )
        if not text.strip():
            ctx.reject("teacher returned an empty answer", stage="answer")
            return None
        return Sample(
            question=item.seed.question,
            answer=text.strip(),
            seed_id=item.seed.id,
            strategy=item.strategy,
            reference=seed_reference(item.seed, self.task),
            meta={"final": self.task.extract(text), "sample_index": item.sample_index},
        )
