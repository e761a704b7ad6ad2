"""Multiple-choice answers with letters A-E.

"A" is also an English article, so a bare capital letter in prose is never taken as the answer:
only an explicit "answer is/Answer:" phrase, a parenthesised letter, or a reply (or final line)
that is nothing but the letter counts.
"""

from __future__ import annotations

import re
from typing import ClassVar

from synthledger.engine.api import Task

_L = r"[A-Ea-e]"
# After "answer is"/"Answer:", an upper-case letter may be followed by more words ("B because"),
# a lower-case one only by punctuation or the end, so "the answer is a bit tricky" is not "A".
_EXPLICIT = re.compile(
    r"(?i:answer)\s*(?:(?i:is)\s*:?|:|=)\s*(?:(?i:option)\s*)?[\*\(\[]*\s*"
    r"(?:([A-E])(?![\w'])|([a-e])(?=\s*$|[\.\)\]\*,;:!]))",
    re.MULTILINE,
)
_ALONE = re.compile(rf"^[\s\*\(\[]*(?:option\s+)?({_L})[\s\*\)\]\.:]*$", re.IGNORECASE)
_PAREN = re.compile(rf"\(({_L})\)")


class MultipleChoiceTask(Task):
    name: ClassVar[str] = "multiple_choice"
    instruction: ClassVar[str] = (
        "Think it through, then end your reply with a final line of the form 'Answer: <letter>' "
        "giving the letter (A-E) of the correct option."
    )

    def extract(self, text: str) -> str | None:
        if not text:
            return None
        explicit = _EXPLICIT.findall(text)
        if explicit:
            upper, lower = explicit[-1]
            return (upper or lower).upper()
        lines = [line for line in text.strip().splitlines() if line.strip()]
        for line in reversed(lines[-1:] + lines[:1]):  # last line, then a one-line reply
            m = _ALONE.match(line)
            if m:
                return m.group(1).upper()
        paren = _PAREN.findall(text)
        return paren[-1].upper() if paren else None

    def equivalent(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        x = self.extract(a) or a.strip().upper()
        y = self.extract(b) or b.strip().upper()
        return x == y
