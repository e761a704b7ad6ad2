"""LLM-as-judge: a model grades the question/answer pair against a rubric. The reply is parsed
leniently (PASS/FAIL, "Score: 8/10", "7 out of 10"), and a reply that commits to nothing is a
rejection with that reason, never a silent pass."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field, field_validator

from synthledger.engine.api import Context, PluginOptions, Sample, Verdict, Verifier
from synthledger.plugins.strategies.common import user, validate_template

DEFAULT_RUBRIC = (
    "The answer is correct, it answers the question that was asked, and its reasoning is sound, "
    "complete and clearly written."
)
DEFAULT_JUDGE_TEMPLATE = (
    "Grade the answer to the question below against this rubric:\n{rubric}\n\n"
    "Question:\n{question}\n\nAnswer:\n{answer}\n\n"
    "Explain briefly, then end with a final line 'Score: <0-10>'."
)

_NUM = r"(\d+(?:\.\d+)?)"
_VERDICT = re.compile(r"(?:verdict|grade|result)\s*[:\-=]?\s*[*_]*\s*(pass|fail)\b", re.IGNORECASE)
_SCORE_OF = re.compile(rf"score\s*[:=]?\s*[*_]*\s*{_NUM}\s*(?:/|out\s+of)\s*{_NUM}", re.IGNORECASE)
_SCORE = re.compile(rf"score\s*[:=]?\s*[*_]*\s*{_NUM}", re.IGNORECASE)
_SHOUT = re.compile(r"\b(PASS|FAIL)\b")
_OF = re.compile(rf"{_NUM}\s*(?:/|out\s+of)\s*{_NUM}", re.IGNORECASE)


def parse_judgement(text: str, scale: float) -> float | None:
    """The judge's grade as a fraction in [0, 1] (PASS = 1, FAIL = 0); None if there is none.
    Explicit labels win over incidental numbers; the last of each kind wins (the conclusion)."""
    text = text or ""

    def ratio(num: str, den: str) -> float | None:
        d = float(den)
        return None if d <= 0 else min(max(float(num) / d, 0.0), 1.0)

    if found := _VERDICT.findall(text):
        return 1.0 if found[-1].lower() == "pass" else 0.0
    if found := _SCORE_OF.findall(text):
        return ratio(*found[-1])
    if found := _SCORE.findall(text):
        return ratio(found[-1], str(scale))
    if found := _SHOUT.findall(text):
        return 1.0 if found[-1] == "PASS" else 0.0
    if found := _OF.findall(text):
        return ratio(*found[-1])
    return None


class LLMJudge(Verifier):
    name: ClassVar[str] = "llm_judge"
    roles: ClassVar[tuple[str, ...]] = ("teacher",)  # instances use their `role` option

    class Options(PluginOptions):
        role: str = "teacher"
        rubric: str = DEFAULT_RUBRIC
        judge_template: str = DEFAULT_JUDGE_TEMPLATE
        scale: float = Field(default=10.0, gt=0.0)
        pass_score: float = Field(default=0.7, ge=0.0, le=1.0)  # fraction of `scale`
        max_tokens: int | None = Field(default=None, gt=0)

        @field_validator("judge_template")
        @classmethod
        def _judge_template(cls, value: str) -> str:
            return validate_template(
                value, "judge_template", {"question", "answer", "rubric", "reference"}, {"question", "answer"}
            )

    options: Options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.roles = (self.options.role,)

    def item_cost(self) -> dict[str, int]:
        return {self.options.role: 1}

    async def verify(self, sample: Sample, ctx: Context) -> Verdict:
        prompt = self.options.judge_template.format(
            question=sample.question,
            answer=sample.answer,
            rubric=self.options.rubric,
            reference=sample.reference if sample.reference is not None else "(none)",
        )
        reply = await ctx.ask(
            self.options.role, user(prompt), purpose="judge", temperature=0.0, max_tokens=self.options.max_tokens
        )
        score = parse_judgement(reply, self.options.scale)
        details = {"score": score, "reply": reply[-500:]}
        if score is None:
            return Verdict(False, "judge gave no score or PASS/FAIL", details)
        passed = score >= self.options.pass_score
        why = f"judge score {score:.2f} ({'pass' if passed else 'fail'}, needs {self.options.pass_score:g})"
        return Verdict(passed, why, details)
