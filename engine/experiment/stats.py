"""Confidence intervals and the crossover, by a paired bootstrap.

Every cell of every replicate is scored on the same held-out examples, so one bootstrap draw
resamples the replicates, and one list of example indices that every cell of every drawn replicate
uses: differences between strategies (and the crossover) keep their pairing, and the interval
reflects both the finite held-out set and the spread between replicates. (Each drawn replicate
once had its own list, as if each had been scored on a set of its own: QA saw intervals narrower
than one evaluation's own, 1.7-13.3% for an untrained student whose plain interval is 0-16.7%.)

Pure Python (no numpy: `experiment show` needs no extras); with counts per example index a draw
costs O(examples) per cell.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Hashable, Sequence

Key = Hashable


@dataclass
class Scored:
    """One cell's outcomes, as the positions it got right and the positions it was scored on."""

    ones: list[int]
    scored: list[int]

    @classmethod
    def parse(cls, outcomes: str) -> "Scored":
        return cls([i for i, c in enumerate(outcomes) if c == "1"], [i for i, c in enumerate(outcomes) if c in "01"])

    def accuracy(self, counts: Sequence[int] | None = None) -> float | None:
        if counts is None:
            return len(self.ones) / len(self.scored) if self.scored else None
        den = sum(counts[i] for i in self.scored)
        return sum(counts[i] for i in self.ones) / den if den else None


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 1]) of a non-empty list."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def interval(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return percentile(values, 0.025), percentile(values, 0.975)


def _counts(rng: random.Random, n: int) -> list[int]:
    counts = [0] * n
    for _ in range(n):
        counts[rng.randrange(n)] += 1
    return counts


def cell_interval(cell: Scored, n: int, draws: int, seed: int = 0) -> tuple[float | None, float | None]:
    """95% interval of one cell's accuracy, resampling held-out examples only."""
    rng = random.Random(seed)
    values = [a for a in (cell.accuracy(_counts(rng, n)) for _ in range(draws)) if a is not None]
    return interval(values)


def mean_over(replicates: dict[int, dict[Key, Scored]], key: Key, counts: Sequence[int] | None = None,
              drawn: list[int] | None = None) -> float | None:
    """Mean accuracy of `key` over the (drawn) replicates that have it, each scored with the example
    weights `counts` (one resample of the held-out set: see the module's docstring)."""
    values = []
    for r in (drawn if drawn is not None else sorted(replicates)):
        cell = replicates[r].get(key)
        if cell is None:
            continue
        acc = cell.accuracy(counts)
        if acc is not None:
            values.append(acc)
    return sum(values) / len(values) if values else None


def bootstrap(replicates: dict[int, dict[Key, Scored]], n: int, draws: int,
              seed: int = 0) -> list[dict[Key, float | None]]:
    """`draws` resampled worlds: each maps every key to its mean accuracy over drawn replicates."""
    rng = random.Random(seed)
    reps = sorted(replicates)
    keys = sorted({k for cells in replicates.values() for k in cells}, key=repr)
    worlds = []
    for _ in range(draws):
        drawn = [reps[rng.randrange(len(reps))] for _ in reps]
        examples = _counts(rng, n)  # one held-out set, resampled once for all
        worlds.append({k: mean_over(replicates, k, examples, drawn) for k in keys})
    return worlds


def crossover(ratios: list[float], diffs: list[float | None]) -> tuple[float | None, str]:
    """Where `diffs` (questions minus answers, by ascending BR) first turns positive, interpolated
    linearly on log BR between the two grid points around it, with a note if answers lead again at
    a higher BR; or None and why not."""
    points = [(r, d) for r, d in zip(ratios, diffs) if d is not None]
    if len(points) < 2:
        return None, "fewer than two budgets were scored"
    if points[0][1] > 0:
        return None, "new questions are already ahead at the lowest budget ratio of the grid"
    for k, ((r0, d0), (r1, d1)) in enumerate(zip(points, points[1:])):
        if d0 <= 0 < d1:
            t = -d0 / (d1 - d0)
            back = [r for r, d in points[k + 2:] if d <= 0]  # the first sign change is not always the last
            note = f"answer augmentation leads again at BR {back[0]:g}" if back else ""
            return math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0))), note
    if all(d == 0 for _, d in points):
        return None, "the two strategies score the same at every budget of the grid"
    return None, "answer augmentation is ahead (or tied) at every budget ratio of the grid"
