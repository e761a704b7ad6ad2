"""GSM8K-style numeric answers.

Teachers rarely follow the requested `#### <number>` format perfectly, so extraction tries the
explicit markers first and only then falls back to the last number in the text (the usual
"flexible extract" of GSM8K evaluation). Extracted answers are normalised to a canonical number
string so that "$1,234.00", "1234" and "1234 dollars" compare (and deduplicate) as equal.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction
from typing import ClassVar

from synthledger.engine.api import Task

# A number: optional sign, thousands-separated or plain digits, optional decimals, or a leading-dot
# decimal. Thousands groups must be exactly three digits so "1,2" is not read as 12.
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
# Only at the start of the answer text ("3/4 of the cake", "1 1/2 cups"), so a ratio further on
# in a sentence is not taken for the answer.
_FRACTION = re.compile(rf"^\s*({_NUM})\s*/\s*({_NUM})(?!\d)")
_MIXED = re.compile(rf"^\s*({_NUM})\s+(\d+)\s*/\s*(\d+)(?!\d)")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_NUMBER = re.compile(_NUM)
_NUMBER_START = re.compile(r"[-+.\d]")  # what every number starts with: scanned for in C
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|=|:)\s*[:\s]*(.+)", re.IGNORECASE
)
_BOXED = "\\boxed{"
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})
# (str.translate with a dict raises and clears a KeyError inside for every character it leaves
# alone: on a reply of a few lines that was ~1% of a zero-latency run. Asked first, nearly always no.)
_MINUS_CHARS = tuple(chr(c) for c in _MINUS_SIGNS)
# What a number is made of: a match never holds anything else, so none spans a character outside.
_NUMBER_CHARS = frozenset("+-.,0123456789")
_DIGITS = "0123456789"


def _plain_minus(text: str) -> str:
    for ch in _MINUS_CHARS:
        if ch in text:
            return text.translate(_MINUS_SIGNS)
    return text


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, braces balanced (a regex cannot nest \\frac{}{} inside)."""
    found: list[str] = []
    start = text.find(_BOXED)
    while start != -1:
        i = start + len(_BOXED)
        depth = 1
        j = i
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            found.append(text[i : j - 1])
        start = text.find(_BOXED, j)
    return found


def _to_fraction(token: str) -> Fraction:
    return Fraction(token.replace(",", ""))


@functools.lru_cache(maxsize=4096)
def parse_number(text: str) -> Fraction | None:
    """The number a short answer string denotes: fractions and mixed numbers first (so "3/4" is not
    read as 3), then the first number in the string (so "$42 dollars." is 42)."""
    s = _plain_minus(text)
    s = _LATEX_FRAC.sub(r"\1/\2", s)
    s = re.sub(r"\$\s*", "", s).replace("\\%", "%").strip().rstrip(".")
    try:
        m = _MIXED.match(s)
        if m:
            whole = _to_fraction(m.group(1))
            frac = Fraction(int(m.group(2)), int(m.group(3)))
            return whole - frac if whole < 0 else whole + frac
        m = _FRACTION.match(s)
        if m:
            return _to_fraction(m.group(1)) / _to_fraction(m.group(2))
        m = _NUMBER.search(s)
        return _to_fraction(m.group(0)) if m else None
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    """Canonical text: integers without decimals, others as a short decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.10g}"
    return text if "e" not in text else repr(float(value))


@functools.lru_cache(maxsize=2048)
def final_number(text: str) -> str | None:
    """The final numeric answer of a GSM-style reply, canonical. Cached: the quality gate, the
    verifier and the dataset fold each ask for the same answer's number."""
    if not text:
        return None
    candidates: list[str] = []
    hashes = _HASHES.findall(text)
    if hashes:
        candidates.append(hashes[-1])
    boxed = _boxed_contents(text)
    if boxed:
        candidates.append(boxed[-1])
    answer_is = _ANSWER_IS.findall(text) if "answer" in text.casefold() else None  # (the pattern is slow to fail)
    if answer_is:
        candidates.append(answer_is[-1])
    for candidate in candidates:
        plain = candidate.strip()
        if _is_whole(plain):  # "#### 42", nearly every reply: no parsing needed
            return str(int(plain))
        value = parse_number(candidate)
        if value is not None:
            return format_number(value)
    # Fallback: the last number anywhere (the flexible extract of GSM8K evaluation).
    last = _last_number(_plain_minus(text))
    if last is None:
        return None
    return str(int(last)) if _is_whole(last) else format_number(_to_fraction(last))


def _is_whole(text: str) -> bool:
    """Plain ASCII digits: canonical as int(), without Fraction's string parsing (which was ~4% of
    a zero-latency run's main thread)."""
    return text.isdigit() and text.isascii()


def _last_number(text: str) -> str | None:
    """`_NUMBER.findall(text)[-1]`, found from the end: the last match holds the last digit (every
    match has one), and lies in the run of number characters around it (a match holds nothing else,
    so none spans a character outside the run, and a left-to-right scan enters the run at its start).
    Only that run is scanned, left to right as `findall` would. On a reply of a few lines without
    `####` (one cut off at max_tokens), scanning all of it was ~5% of a zero-latency run. (`\\d`
    matches every script's digits: a text that is not ASCII is scanned whole.)"""
    if not text.isascii():
        return _last_in(text)
    last_digit = max(text.rfind(d) for d in _DIGITS)
    if last_digit < 0:
        return None
    start, end = last_digit, last_digit + 1
    while start > 0 and text[start - 1] in _NUMBER_CHARS:
        start -= 1
    while end < len(text) and text[end] in _NUMBER_CHARS:
        end += 1
    return _last_in(text[start:end])


def _last_in(run: str) -> str | None:
    """The last `_NUMBER` match in `run`, scanned left to right from each place one may start."""
    last = None
    pos = 0
    while True:
        start = _NUMBER_START.search(run, pos)
        if start is None:
            return last
        found = _NUMBER.match(run, start.start())
        if found is None:
            pos = start.start() + 1
        else:
            last, pos = found.group(0), found.end()


class GSM8KTask(Task):
    name: ClassVar[str] = "gsm8k"
    instruction: ClassVar[str] = (
        "Solve the problem step by step. Then end your reply with a final line of the form "
        "'#### <number>' containing only the numeric answer."
    )
    rel_tol: ClassVar[float] = 1e-6
    abs_tol: ClassVar[float] = 1e-9

    def extract(self, text: str) -> str | None:
        return final_number(text)

    def equivalent(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        x, y = parse_number(a), parse_number(b)
        if x is None or y is None:
            return a.strip().casefold() == b.strip().casefold()
        return math.isclose(float(x), float(y), rel_tol=self.rel_tol, abs_tol=self.abs_tol)
