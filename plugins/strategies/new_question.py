"""New questions: the augmenter writes an unseen question in the style of a few seeds, it is
deduplicated and (optionally) checked to be well-posed, then the teacher answers it.

The only family that keeps improving at large budgets, but it needs a capable augmenter and has
no ground truth for its samples.
"""

from __future__ import annotations

import itertools
import random
from typing import ClassVar, Iterator

from pydantic import Field, field_validator

from synthledger.engine.api import Context, PlanItem, Sample, Seed, Strategy

from .asking import ask_answer, ask_question
from .common import parse_yes_no, user, validate_template
from .options import AnswerOptions

DEFAULT_NEW_QUESTION_TEMPLATE = (
    "Here are some example problems:\n\n{examples}\n\n"
    "Write one new problem in the same style and of similar difficulty. It must be self-contained "
    "and solvable, different from the examples, and have a different answer from each of them. "
    "Reply with the new problem only, without a solution."
)
DEFAULT_CHECK_TEMPLATE = (
    "Is the following question well-posed and solvable: self-contained, unambiguous, and with "
    "enough information for exactly one correct answer? Think briefly, then end with a final line "
    "'Verdict: YES' or 'Verdict: NO'.\n\nQuestion: {question}"
)


def format_examples(seeds: list[Seed]) -> str:
    return "\n\n".join(f"Example {i}:\n{seed.question}" for i, seed in enumerate(seeds, 1))


class NewQuestion(Strategy):
    name: ClassVar[str] = "new_question"
    roles: ClassVar[tuple[str, ...]] = ("augmenter", "teacher")

    class Options(AnswerOptions):
        new_question_template: str = DEFAULT_NEW_QUESTION_TEMPLATE
        check_template: str = DEFAULT_CHECK_TEMPLATE
        num_examples: int = Field(default=3, ge=1)
        check_well_posed: bool = True
        temperature: float = Field(default=1.0, ge=0.0, le=2.0)
        answer_temperature: float | None = Field(default=None, ge=0.0, le=2.0)

        @field_validator("new_question_template")
        @classmethod
        def _new_question_template(cls, value: str) -> str:
            return validate_template(value, "new_question_template", {"examples", "instruction"}, {"examples"})

        @field_validator("check_template")
        @classmethod
        def _check_template(cls, value: str) -> str:
            return validate_template(value, "check_template", {"question"}, {"question"})

    options: Options

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._by_id = {seed.id: seed for seed in self.seeds}

    def plan(self) -> Iterator[PlanItem]:
        if not self.seeds:
            return
        k = min(self.options.num_examples, len(self.seeds))
        for i in itertools.count():
            # Each item draws its own examples, so item i is the same whatever came before it.
            rng = random.Random(f"{self.name}:{self.random_seed}:{i}")
            picked = [self.seeds[j] for j in rng.sample(range(len(self.seeds)), k)]
            yield PlanItem(
                key=f"nq:{i}",
                strategy=self.name,
                seed=picked[0],
                sample_index=i,
                extra={"examples": [seed.id for seed in picked]},
            )

    def item_cost(self, item: PlanItem) -> dict[str, int]:
        return {"augmenter": 2 if self.options.check_well_posed else 1, "teacher": 1}

    async def run(self, item: PlanItem, ctx: Context) -> Sample | None:
        example_ids = list(item.extra.get("examples") or [item.seed.id])
        examples = [self._by_id.get(sid, item.seed) for sid in example_ids]
        prompt = self.options.new_question_template.format(
            examples=format_examples(examples), instruction=self.task.instruction
        )
        # sample_index: the same examples may recur; each item is its own draw
        question = await ask_question(ctx, prompt, purpose="new_question", sample_index=item.sample_index,
                                      temperature=self.options.temperature,
                                      sources=[seed.question for seed in examples])
        if question is None:
            return None
        if self.options.check_well_posed:
            reply = await ctx.ask(
                "augmenter",
                user(self.options.check_template.format(question=question)),
                purpose="check",
                temperature=0.0,
            )
            verdict = parse_yes_no(reply)
            if verdict is not True:
                why = "not well-posed (check said NO)" if verdict is False else "check gave no YES/NO verdict"
                ctx.reject(why, stage="check", question=question, reply=reply[:500])
                return None
        answer = await ask_answer(ctx, question, self.options, self.task, self.options.answer_temperature)
        if answer is None:
            return None
        return Sample(
            question=question,
            answer=answer.strip(),
            seed_id=None,
            strategy=item.strategy,
            reference=None,
            meta={"final": self.task.extract(answer), "examples": example_ids},
        )
