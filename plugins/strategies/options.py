"""Options shared by every strategy that asks the teacher for an answer."""

from __future__ import annotations

from pydantic import Field, field_validator

from synthledger.engine.api import PluginOptions

from .common import ANSWER_FIELDS, DEFAULT_ANSWER_TEMPLATE, validate_template


class AnswerOptions(PluginOptions):
    answer_template: str = DEFAULT_ANSWER_TEMPLATE
    max_tokens: int | None = Field(default=None, gt=0)

    @field_validator("answer_template")
    @classmethod
    def _answer_template(cls, value: str) -> str:
        return validate_template(value, "answer_template", ANSWER_FIELDS, {"question"})
