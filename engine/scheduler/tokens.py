"""One request's tokens as each token limit counts them: what the limiter (limiter.py) and its
likely counts (likely_tokens.py) both speak."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TOKEN_LIMITS", "Tokens", "as_tokens", "counted", "counts_of"]


@dataclass(frozen=True)
class Tokens:
    """One request's tokens as each token limit counts them (see limiter.py's docstring)."""

    total: int = 0
    input: int = 0
    output: int = 0


TOKEN_LIMITS = ("tokens", "input_tokens", "output_tokens")  # the dimensions, as `learn` names them


def counted(name: str, t: "Tokens") -> int:
    """What token limit `name` (TOKEN_LIMITS) counts of a request's tokens."""
    return t.total if name == "tokens" else t.input if name == "input_tokens" else t.output


def counts_of(t: "Tokens") -> dict[str, int]:
    """What each token limit (TOKEN_LIMITS) counts of a request's tokens."""
    return {name: counted(name, t) for name in TOKEN_LIMITS}


def as_tokens(t: "int | Tokens") -> "Tokens":
    """A bare count is a `total` (what a tokens-per-minute limit counts)."""
    return t if isinstance(t, Tokens) else Tokens(total=t)
