"""Diversity statistics of a dataset's texts.

The research notes that filtering reduced diversity; these numbers make that visible when
strategies or verifiers are compared. Distinct-n (distinct n-grams over all n-grams) is the
standard cheap measure: 1.0 means no n-gram repeats anywhere, values near 0 mean heavy repetition.
"""

from __future__ import annotations

import re
from typing import Iterable

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def distinct_ngram_ratio(texts: Iterable[str], n: int = 2) -> float:
    """Distinct word n-grams / total word n-grams over all texts (n-grams never span two texts).
    0.0 when there are no n-grams at all."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = tokens(text)
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def diversity_stats(texts: Iterable[str]) -> dict[str, float]:
    """The summary a run report shows for questions or answers."""
    items = list(texts)
    unique = len({" ".join(tokens(t)) for t in items})
    return {
        "count": len(items),
        "unique_ratio": unique / len(items) if items else 0.0,
        "distinct_1": distinct_ngram_ratio(items, 1),
        "distinct_2": distinct_ngram_ratio(items, 2),
        "distinct_3": distinct_ngram_ratio(items, 3),
        "mean_words": sum(len(tokens(t)) for t in items) / len(items) if items else 0.0,
    }
