"""The engine's hints name command-line flags (`--resume`, `--run ID`, `--set`): the CLI is where
most users meet them. A script calling `synthledger.generate` has keyword arguments instead, so the
Python API rewrites those hints once, at its boundary, rather than every raise site knowing who
called it."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, TypeVar

from .errors import SynthledgerError

# Most specific first: `generate --resume` before `--resume`.
_FLAGS = [
    (re.compile(r"`?generate --config (?:'[^']*'|\S+) --resume`?"), "generate(..., resume=True)"),
    (re.compile(r"`?generate --resume`?"), "generate(..., resume=True)"),
    (re.compile(r"run with --config \(and without --resume\)"), "call generate(config) without resume=True"),
    (re.compile(r"without --resume"), "without resume=True"),
    (re.compile(r"pass --resume"), "pass resume=True"),
    (re.compile(r"pass --run (\S+)"), r'pass run="\1"'),
    (re.compile(r"or --name NEW"), 'or name="NEW"'),
    (re.compile(r"given by --set"), "given by overrides"),
    (re.compile(r"\(from --store\)"), "(from the store argument)"),
    (re.compile(r"(?:python cli\.py|synthledger) --busy-timeout SECONDS <command> \.\.\., or "), "set "),
]

T = TypeVar("T")


def in_python_terms(text: str) -> str:
    for pattern, words in _FLAGS:
        text = pattern.sub(words, text)
    return text


@contextmanager
def python_terms() -> Iterator[None]:
    """Re-raise a SynthledgerError with its hints in keyword-argument terms (same type, same cause)."""
    try:
        yield
    except SynthledgerError as exc:
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (in_python_terms(exc.args[0]), *exc.args[1:])
        raise


def result_in_python_terms(result: T) -> T:
    """A RunResult whose message (e.g. "`generate --resume` continues the run") speaks Python."""
    message = getattr(result, "message", None)
    if isinstance(message, str):
        return replace(result, message=in_python_terms(message))  # type: ignore[type-var]
    return result
