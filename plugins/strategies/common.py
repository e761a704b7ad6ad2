"""Pieces every built-in strategy shares: prompt templates checked at config load, the seed's
reference answer, parsing of augmenter replies, and the round-robin order over seeds."""

from __future__ import annotations

import functools
import itertools
import random
import re
import string
from typing import Iterator

from synthledger.engine.api import Seed, Task

_FORMATTER = string.Formatter()


def template_fields(template: str) -> set[str]:
    """The placeholders of a str.format template; positional or indexed ones are refused because
    strategies only ever fill named values."""
    names: set[str] = set()
    for _, field, _, _ in _FORMATTER.parse(template):
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(f"placeholder {{{field}}} is not a plain name; use one of the named placeholders")
        names.add(field)
    return names


def validate_template(template: str, option: str, allowed: set[str], required: set[str]) -> str:
    """Raise ValueError naming `option` and the offending variable, so a bad template is a config
    error at load time rather than a KeyError after money was spent."""
    try:
        names = template_fields(template)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None
    unknown = sorted(names - allowed)
    if unknown:
        raise ValueError(
            f"{option}: unknown placeholder {{{unknown[0]}}} (allowed: "
            + ", ".join(f"{{{a}}}" for a in sorted(allowed))
            + "; write {{ and }} for literal braces)"
        )
    missing = sorted(required - names)
    if missing:
        raise ValueError(f"{option}: missing required placeholder {{{missing[0]}}}")
    return template


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def seed_reference(seed: Seed, task: Task) -> str | None:
    """The ground-truth final answer of a seed, when the task has ground truth and the seed an answer."""
    if not task.has_ground_truth or seed.answer is None:
        return None
    return _reference(task, seed.answer)


@functools.lru_cache(maxsize=4096)
def _reference(task: Task, answer: str) -> str | None:
    # A seed is answered many times over a run; its reference is the same every time.
    return task.extract(answer)


def round_robin(seeds: list[Seed], salt: str, rounds: int | None = None) -> Iterator[tuple[int, Seed]]:
    """(round, seed) pairs: every seed once per round, in one order shuffled by `salt`, so whatever
    budget ends the plan, per-seed counts differ by at most one and the extra ones go to the first
    seeds of that order. Memory is one index list, whatever the budget."""
    order = list(range(len(seeds)))
    random.Random(salt).shuffle(order)
    if not order:
        return
    for r in itertools.count() if rounds is None else range(rounds):
        for i in order:
            yield r, seeds[i]


_FENCE = re.compile(r"^```[\w-]*\s*|\s*```$")
_LABEL = re.compile(
    r"^\s*(?:[#*_\s]*)(?:(?:here(?:'s| is)\s+(?:the|a|my)\s+)?(?:rephrased|rewritten|paraphrased|"
    r"reworded|new|generated|final)\s+)?(?:question|problem|version)\s*(?:\d+\s*)?[*_]*\s*:[*_\s]*",
    re.IGNORECASE,
)
_PREAMBLE = re.compile(r"^\s*(?:sure|certainly|okay|ok|of course|here)\b.*:\s*$", re.IGNORECASE)
_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb")]


def clean_question(text: str) -> str:
    """The question inside an augmenter's reply: code fences, a chatty first line ("Sure! Here is
    the rephrased question:"), a "Rephrased question:" label and surrounding quotes removed."""
    s = _FENCE.sub("", (text or "").strip()).strip()
    lines = s.splitlines()
    while lines and (not lines[0].strip() or _PREAMBLE.match(lines[0])):
        lines.pop(0)
    s = "\n".join(lines).strip()
    m = _LABEL.match(s)
    if m:
        s = s[m.end() :].strip()
    s = s.strip("*_ \n").strip()
    for left, right in _QUOTES:
        if len(s) >= 2 and s.startswith(left) and s.endswith(right):
            s = s[1:-1].strip()
            break
    return s


def same_text(a: str, b: str) -> bool:
    """The same question, up to case and spacing."""
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


_VERDICT = re.compile(r"(?:verdict|answer|decision)\s*[:\-=]?\s*[*_]*\s*(yes|no)\b", re.IGNORECASE)
_FIRST = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
_SHOUT = re.compile(r"\b(YES|NO)\b")


def parse_yes_no(text: str) -> bool | None:
    """YES -> True, NO -> False, None when the reply commits to neither."""
    for pattern, pick in ((_VERDICT, -1), (_FIRST, 0), (_SHOUT, -1)):
        found = pattern.findall(text or "")
        if found:
            return found[pick].lower() == "yes"
    return None


DEFAULT_ANSWER_TEMPLATE = "{question}\n\n{instruction}"
ANSWER_FIELDS = {"question", "instruction"}


def answer_prompt(template: str, question: str, task: Task) -> list[dict[str, str]]:
    """The teacher's prompt for answering `question` in the task's format."""
    return user(template.format(question=question, instruction=task.instruction).strip())
