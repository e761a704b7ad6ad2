"""The steps both question families (rephrase, new question) take: ask the augmenter for a
question, clean it, refuse an empty or near-duplicate one; then ask the teacher to answer it.

Each refusal is recorded through `ctx.reject` with its stage, so `show` can say where samples
were lost, and the item ends without a sample.
"""

from __future__ import annotations

from typing import Sequence

from synthledger.engine.api import Context, Task

from .common import answer_prompt, clean_question, same_text, user
from .options import AnswerOptions


async def ask_question(ctx: Context, prompt: str, *, purpose: str, sample_index: int,
                       temperature: float, sources: Sequence[str] = ()) -> str | None:
    """The augmenter's question for `prompt`, cleaned and admitted by near-duplicate control;
    None (after ctx.reject, stage `purpose` or "dedupe") when there is none to use.

    A reply that is one of `sources` (the seed questions in the prompt) again is refused even with
    [dedupe] off (with it on, the index refuses it first): it is no rewrite or new question but a
    seed exported under another strategy's name, and its answer the very query answer augmentation
    asks for that seed, shared for free (an exact copy of that row in a mix)."""
    raw = await ctx.ask("augmenter", user(prompt), purpose=purpose, sample_index=sample_index,
                        temperature=temperature)
    question = clean_question(raw)
    if not question:
        ctx.reject("augmenter returned no question", stage=purpose, reply=raw[:500])
        return None
    duplicate = ctx.check_new_question(question)
    if duplicate is not None:
        ctx.reject(duplicate, stage="dedupe", question=question)
        return None
    if any(same_text(question, source) for source in sources):  # [dedupe] off: the index did not look
        ctx.reject("augmenter copied a seed question", stage=purpose, question=question)
        return None
    return question


async def ask_answer(ctx: Context, question: str, options: AnswerOptions, task: Task,
                     temperature: float | None) -> str | None:
    """The teacher's answer to `question` in the task's format; None (after ctx.reject) if empty."""
    answer = await ctx.ask(
        "teacher",
        answer_prompt(options.answer_template, question, task),
        purpose="answer",
        temperature=temperature,
        max_tokens=options.max_tokens,
    )
    if not answer.strip():
        ctx.reject("teacher returned an empty answer", stage="answer", question=question)
        return None
    return answer
