"""Which strategy to run for a given seed set and budget, following the research's framework.

The decisive quantity is the budget ratio BR = Q / |S| (teacher queries per seed). Below a
crossover, answer augmentation wins; above it, new questions do (they keep scaling) if the
augmenter is strong, question rephrasing if it is weak; near the crossover a mix hedges. The
crossover itself falls as the seed set grows, so it is interpolated from the reported points.
Every number here is a starting point: a pilot run on the user's own task measures the real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

SOURCE = "Chan et al. 2024, arXiv 2409.19759"

# (seed-set size, reported crossover BR). At 100 seeds a range 27-51 was reported: its geometric
# mean is used, and the range sets the width of the band where a mix is recommended. "Full" is the
# GSM8K training set (7,473 questions).
CROSSOVERS: tuple[tuple[int, float, str], ...] = (
    (100, math.sqrt(27 * 51), "BR ~27-51 at 100 seeds (geometric mean)"),
    (1000, 17.6, "BR ~17.6 at 1,000 seeds"),
    (7473, 16.4, "BR ~16.4 with the full GSM8K training set"),
)
BAND_LOW = 27 / math.sqrt(27 * 51)   # the 100-seed range relative to its centre, applied at every size
BAND_HIGH = 51 / math.sqrt(27 * 51)
QUESTION_STRATEGIES = ("new_question", "question_rephrase")  # the families whose augmenter calls come on top of Q
LARGE_SEED_SET = 1000  # from here on the research finds the choice of strategy matters much less
MISTRAL_CROSSOVER = 12.0


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str


@dataclass
class Recommendation:
    strategy: str  # a strategy name, or "mix" with `fractions`
    ratio: float
    fractions: dict[str, float] | None = None
    verifier: str = "none"
    reasons: list[str] = field(default_factory=list)
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    budget: int | None = None  # Q, in teacher queries
    # Q counted as an experiment counted it (`recommend --from`): its crossover is in those units.
    # None: as the research counts it (teacher answers); else the roles, [] for every role.
    counted_as: list[str] | None = None

    def render(self) -> str:
        """What a person reads: the choice, the config section to paste, the reasons and the
        thresholds with where each comes from."""
        choice = self.strategy if self.fractions is None else "mix (" + ", ".join(
            f"{name} {share:.0%}" for name, share in self.fractions.items()) + ")"
        lines = [f"recommended: {choice}; verifier: {self.verifier}", "", "[strategy]"]
        section = self.strategy_config()
        lines.append(f'name = "{section["name"]}"')
        for part in section.get("parts", []):  # type: ignore[union-attr]
            lines.append(f'[[strategy.parts]]\nname = "{part["name"]}"\nfraction = {part["fraction"]}')
        budget = self.budget_config()
        if budget:
            lines += ["", "[budget]", f"queries = {budget['queries']}"]
            if "counted_roles" in budget:
                lines.append("counted_roles = [" + ", ".join(f'"{r}"' for r in budget["counted_roles"]) + "]")  # type: ignore[union-attr]
        lines += ["", "why:"] + [f"  - {reason}" for reason in self.reasons]
        if self.thresholds:
            lines += ["", "thresholds:"] + [f"  {name} = {t.value}  ({t.source})" for name, t in self.thresholds.items()]
        return "\n".join(lines)

    def budget_config(self) -> dict[str, object]:
        """The `[budget]` section that makes Q what the advice means by it: teacher answers, as the
        research counts them. By default every role counts, and a question strategy would then get
        a third of the samples at the same `queries` (new question: augmenter, check, teacher)."""
        if self.budget is None:
            return {}
        if self.counted_as is not None:
            return {"queries": self.budget, **({"counted_roles": self.counted_as} if self.counted_as else {})}
        names = [self.strategy] if self.fractions is None else list(self.fractions)
        if any(name in QUESTION_STRATEGIES for name in names):
            return {"queries": self.budget, "counted_roles": ["teacher"]}
        return {"queries": self.budget}

    def strategy_config(self) -> dict[str, object]:
        """The `[strategy]` config section this recommends."""
        if self.fractions is None:
            return {"name": self.strategy}
        return {"name": "mix", "parts": [{"name": n, "fraction": f} for n, f in self.fractions.items()]}


def crossover(seeds: int) -> Threshold:
    """The crossover BR for a seed set of this size: linear in log(seeds) between reported points,
    held constant outside them (no extrapolation beyond what was measured)."""
    points = CROSSOVERS
    for size, value, label in points:
        if seeds == size:
            return Threshold(round(value, 1), f"{SOURCE}: {label}")
    if seeds < points[0][0]:
        return Threshold(round(points[0][1], 1), f"{SOURCE}: {points[0][2]}, held below 100 seeds")
    if seeds > points[-1][0]:
        return Threshold(round(points[-1][1], 1), f"{SOURCE}: {points[-1][2]}, held above it")
    for (s0, c0, label0), (s1, c1, label1) in zip(points, points[1:]):
        if s0 < seeds < s1:
            t = (math.log(seeds) - math.log(s0)) / (math.log(s1) - math.log(s0))
            value = round(c0 + t * (c1 - c0), 1)
            return Threshold(value, f"{SOURCE}: interpolated in log(seeds) between {label0} and {label1}")
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Measured:
    """A crossover measured on the user's own task (an experiment), used instead of the literature's;
    its confidence interval, when known, is the band where a mix is recommended."""

    value: float
    low: float | None
    high: float | None
    source: str


def recommend(
    seeds: int,
    budget: int,
    augmenter: Literal["weak", "strong"] = "strong",
    verifiable: bool | None = None,
    measured: Measured | None = None,
    counted_as: list[str] | None = None,
) -> Recommendation:
    """A strategy (or mix) for `seeds` seed questions and `budget` teacher queries (`counted_as`:
    see Recommendation)."""
    _check_inputs(seeds, budget, augmenter)
    ratio = budget / seeds
    cross = crossover(seeds) if measured is None else Threshold(max(round(measured.value, 1), 0.1), measured.source)
    low, high = _mix_band(cross, measured)
    questions = "new_question" if augmenter == "strong" else "question_rephrase"
    rec = Recommendation(
        strategy="",
        ratio=round(ratio, 3),
        budget=budget,
        counted_as=counted_as,
        thresholds={
            "crossover_br": cross,
            "mix_band_low": low,
            "mix_band_high": high,
            "large_seed_set": Threshold(LARGE_SEED_SET, f"{SOURCE}: strategy choice matters less in high-data regimes"),
            "crossover_br_mistral_student": Threshold(MISTRAL_CROSSOVER, f"{SOURCE}: ~12 with a Mistral-7B student"),
        },
    )
    reasons = rec.reasons
    reasons.append(f"budget ratio BR = {budget}/{seeds} = {ratio:.1f} queries per seed")
    reasons.append(
        f"crossover for {seeds} seeds ~{cross.value:g} ({cross.source}); mix band {low.value:g}-{high.value:g}"
    )
    _choose(rec, ratio, low, high, augmenter, questions)
    if rec.strategy == "answer_augmentation" and ratio > MISTRAL_CROSSOVER:
        reasons.append(f"with a Mistral-7B student the crossover was ~{MISTRAL_CROSSOVER:g}, so for such a student "
                       f"{questions} may already pay off")
    if seeds >= LARGE_SEED_SET:
        reasons.append(f"with {seeds} seeds the choice matters much less than with few seeds")
    if counted_as is None and "counted_roles" in rec.budget_config():
        reasons.append(f"Q = {budget} teacher answers, as the research counts the budget: counted_roles = "
                       "[\"teacher\"], the augmenter's calls (1 per rephrase, 2 per new question with its "
                       "check) paid on top")
    rec.verifier = _verifier(rec, verifiable, reasons)
    if measured is None:
        reasons.append("these thresholds are starting points: compare strategies in a small pilot run on your task "
                       "(`experiment run`, then `recommend --from EXP`)")
    return rec


def _check_inputs(seeds: int, budget: int, augmenter: str) -> None:
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if augmenter not in ("weak", "strong"):
        raise ValueError(f"augmenter must be 'weak' or 'strong', got {augmenter!r}")


def _mix_band(cross: Threshold, measured: Measured | None) -> tuple[Threshold, Threshold]:
    """The BR range around the crossover where a mix hedges: the measured 95% CI when the
    experiment gave a usable one, else the literature's band relative to its centre."""
    band = "(the 27-51 range at 100 seeds, relative to its centre)"
    low = Threshold(round(cross.value * BAND_LOW, 1), f"crossover x {BAND_LOW:.2f} {band}")
    high = Threshold(round(cross.value * BAND_HIGH, 1), f"crossover x {BAND_HIGH:.2f} {band}")
    if measured is not None and measured.low is not None and measured.high is not None:
        lo, hi = round(min(measured.low, cross.value), 1), round(max(measured.high, cross.value), 1)
        if 0 < lo < hi:  # a usable band; a point-like interval keeps the literature's relative band
            low = Threshold(lo, "lower end of the measured 95% CI")
            high = Threshold(hi, "upper end of the measured 95% CI")
    return low, high


def _choose(rec: Recommendation, ratio: float, low: Threshold, high: Threshold, augmenter: str,
            questions: str) -> None:
    """Below the band, answer augmentation; above it, the question family; inside it, a mix."""
    if ratio < low.value:
        rec.strategy = "answer_augmentation"
        rec.reasons.append("BR below the band: more answers to the seed questions is the best use of a small budget")
    elif ratio > high.value:
        rec.strategy = questions
        if augmenter == "strong":
            rec.reasons.append("BR above the band with a strong augmenter: new questions, which keep improving "
                               "with budget")
        else:
            rec.reasons.append("BR above the band with a weak augmenter: rephrasing, which is robust to a weak "
                               "augmenter (new questions lose ~15% with a 7B augmenter)")
    else:
        # Share of the question family grows with log(BR) across the band.
        t = (math.log(ratio) - math.log(low.value)) / (math.log(high.value) - math.log(low.value))
        share = round(min(max(t, 0.1), 0.9), 2)
        rec.strategy = "mix"
        rec.fractions = {"answer_augmentation": round(1 - share, 2), questions: share}
        rec.reasons.append(f"BR inside the band around the crossover: a mix hedges ({rec.fractions})")


def _verifier(rec: Recommendation, verifiable: bool | None, reasons: list[str]) -> str:
    """Spend on more data, not on filtering, unless the filter is free."""
    uses_seed_answers = rec.strategy in ("answer_augmentation", "question_rephrase") or (
        rec.fractions is not None and rec.fractions.get("answer_augmentation", 0) > 0
    )
    if verifiable and uses_seed_answers:
        reasons.append("verifier final_answer: free (no queries) because the seeds have ground-truth answers")
        return "final_answer"
    if verifiable:
        reasons.append("verifier none: new questions have no reference answer, and paid verification was no better "
                       "than spending the same queries on more data")
    elif verifiable is None:
        reasons.append("verifier none unless the task has ground truth (then final_answer is free); paid "
                       "verification was no better than spending the same queries on more data")
    else:
        reasons.append("verifier none: no ground truth, and paid verification was no better than more data")
    return "none"
