"""Question rephrase: a seed question reworded (same meaning, same answer), then answered.

Robust to a weak augmenter, because rewording is easier than inventing. With
`reuse_seed_answer`, the seed's own answer is kept and no teacher query is spent.
"""

from __future__ import annotations

from typing import ClassVar, Iterator

from pydantic import Field, field_validator

from synthledger.engine.api import Context, PlanItem, Sample, Strategy

from .asking import ask_answer, ask_question
from .common import round_robin, seed_reference, validate_template
from .options import AnswerOptions

DEFAULT_REPHRASE_TEMPLATE = (
    "Rewrite the following question so that it is worded differently but keeps exactly the same "
    "meaning, the same numbers and the same answer. Do not solve it. Reply with the rewritten "
    "question only.\n\nQuestion: {question}"
)


class QuestionRephrase(Strategy):
    name: ClassVar[str] = "question_rephrase"
    roles: ClassVar[tuple[str, ...]] = ("augmenter", "teacher")

    class Options(AnswerOptions):
        rephrase_template: str = DEFAULT_REPHRASE_TEMPLATE
        temperature: float = Field(default=0.7, ge=0.0, le=2.0)
        answer_temperature: float | None = Field(default=None, ge=0.0, le=2.0)
        reuse_seed_answer: bool = False
        rephrases_per_seed: int | None = Field(default=None, ge=1)

        @field_validator("rephrase_template")
        @classmethod
        def _rephrase_template(cls, value: str) -> str:
            return validate_template(value, "rephrase_template", {"question"}, {"question"})

    options: Options

    def plan(self) -> Iterator[PlanItem]:
        salt = f"{self.name}:{self.random_seed}"
        for r, seed in round_robin(self.seeds, salt, self.options.rephrases_per_seed):
            yield PlanItem(key=f"qr:{seed.id}:{r}", strategy=self.name, seed=seed, sample_index=r)

    def _reuses(self, item: PlanItem) -> bool:
        return self.options.reuse_seed_answer and item.seed.answer is not None

    def item_cost(self, item: PlanItem) -> dict[str, int]:
        return {"augmenter": 1} if self._reuses(item) else {"augmenter": 1, "teacher": 1}

    async def run(self, item: PlanItem, ctx: Context) -> Sample | None:
        seed = item.seed
        question = await ask_question(ctx, self.options.rephrase_template.format(question=seed.question),
                                      purpose="rephrase", sample_index=item.sample_index,
                                      temperature=self.options.temperature, sources=[seed.question])
        if question is None:
            return None
        if self._reuses(item):
            answer, source = seed.answer or "", "seed"
        else:
            answer = await ask_answer(ctx, question, self.options, self.task, self.options.answer_temperature)
            source = "teacher"
            if answer is None:
                return None
        return Sample(
            question=question,
            answer=answer.strip(),
            seed_id=seed.id,
            strategy=item.strategy,
            reference=seed_reference(seed, self.task),
            meta={"final": self.task.extract(answer), "answer_source": source, "seed_question": seed.question},
        )
