"""`recommend --from EXP`: the crossover measured on the user's own task, for a given seed count.

Between two seed-set sizes the experiment measured, the crossover (and its interval) is
interpolated linearly in log |S|; outside them, or where the grid showed no crossover, the answer
says so and the literature's values are used, as without `--from`.
"""

from __future__ import annotations

import math
from typing import Any

from ..recommend import Measured, Recommendation, recommend

WEAK_SUPPORT = 0.8  # the share of bootstrap draws finding a crossover below which it is called weak


def _lerp(a: float | None, b: float | None, t: float) -> float | None:
    if a is None or b is None:
        return None
    return a + t * (b - a)


def measured_crossover(result: dict[str, Any], seeds: int) -> tuple[Measured | None, str]:
    """The measured crossover at `seeds`, or None and the reason it cannot be used."""
    exp = result["experiment"]
    label = f"experiment {exp['name']} ({exp['id']})"
    points = sorted((c for c in result["crossovers"]), key=lambda c: c["seed_size"])
    if not points:
        return None, (f"{label} cannot measure a crossover (its grid needs answer_augmentation and new_question "
                      "or question_rephrase); using the literature values")
    sizes = [c["seed_size"] for c in points]
    if seeds < sizes[0] or seeds > sizes[-1]:
        return None, (f"{seeds} seeds is outside the range {label} measured (|S| {sizes[0]}-{sizes[-1]}); "
                      "using the literature values")
    for c in points:
        if c["seed_size"] == seeds:
            if c["ratio"] is None:
                return None, f"{label} found no crossover at |S|={seeds} ({c['note']}); using the literature values"
            return Measured(c["ratio"], c["ci_low"], c["ci_high"],
                            f"measured by {label} at |S|={seeds}{_support(c.get('support'))}"), ""
    for a, b in zip(points, points[1:]):
        if a["seed_size"] < seeds < b["seed_size"]:
            missing = [p for p in (a, b) if p["ratio"] is None]
            if missing:
                return None, (f"{label} found no crossover at |S|={missing[0]['seed_size']} "
                              f"({missing[0]['note']}); using the literature values")
            t = (math.log(seeds) - math.log(a["seed_size"])) / (math.log(b["seed_size"]) - math.log(a["seed_size"]))
            supports = [x for x in (a.get("support"), b.get("support")) if x is not None]
            source = (f"measured by {label}, interpolated in log |S| between |S|={a['seed_size']} "
                      f"(BR {a['ratio']:.1f}) and |S|={b['seed_size']} (BR {b['ratio']:.1f})"
                      f"{_support(min(supports) if supports else None)}")
            return Measured(_lerp(a["ratio"], b["ratio"], t), _lerp(a["ci_low"], b["ci_low"], t),  # type: ignore[arg-type]
                            _lerp(a["ci_high"], b["ci_high"], t), source), ""
    raise AssertionError("unreachable")  # pragma: no cover


def _support(share: float | None) -> str:
    """How often the bootstrap found the crossover: below WEAK_SUPPORT it is said to be weak."""
    if share is None:
        return ""
    weak = "; a weak measurement: the grid's cells do not settle where it lies" if share < WEAK_SUPPORT else ""
    return f", found in {100 * share:.0f}% of bootstrap draws{weak}"


def measured_here(result: dict[str, Any], seeds: int, budget: int) -> tuple[dict[str, Any] | None, str]:
    """At a point the grid measured (this |S| and Q): the strategy that scored best there when its
    interval clears every other's (else None), and what was measured, in words ("" if not measured)."""
    rows = [r for r in result.get("summary", []) if r["seed_size"] == seeds and r["budget"] == budget
            and r["accuracy"] is not None]
    if len(rows) < 2:
        return None, ""
    rows.sort(key=lambda r: -r["accuracy"])
    said = ", ".join(f"{r['strategy']} {100 * r['accuracy']:.1f}%" + (
        f" (95% CI {100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f})" if r["ci_low"] is not None else "")
        for r in rows)
    best, rest = rows[0], rows[1:]
    clear = best["ci_low"] is not None and all(r["ci_high"] is not None and best["ci_low"] > r["ci_high"] for r in rest)
    return (best if clear else None), f"at |S|={seeds}, Q={budget} your experiment measured {said}"


def recommend_from(result: dict[str, Any], seeds: int, budget: int, augmenter: str = "strong",
                   verifiable: bool | None = None) -> Recommendation:
    measured, why_not = measured_crossover(result, seeds)
    exp = result["experiment"]
    # A measured crossover is in the grid's budget units: Q as its base config counted it (QA: a grid
    # that counted every role was read as teacher answers, and `counted_roles = ["teacher"]` advised).
    # An older result does not say: the research's units are kept.
    units = measured is not None and "counted_roles" in exp
    counted_as = list(exp["counted_roles"] or []) if units else None
    rec = recommend(seeds, budget, augmenter=augmenter, verifiable=verifiable, measured=measured,  # type: ignore[arg-type]
                    counted_as=counted_as)
    if measured is not None:
        ci = "" if measured.low is None else f" (95% CI {measured.low:.1f}-{measured.high:.1f})"
        rec.reasons.insert(0, f"crossover BR {measured.value:.1f}{ci} {measured.source}: measured on your task, "
                              f"not taken from the literature")
    if counted_as is not None:
        counted = f"{', '.join(counted_as)} queries" if counted_as else "the queries of every role (augmenter and checks too)"
        rec.reasons.append(f"Q counts {counted}, as experiment {exp['name']} counted its budgets: its crossover is in "
                           "those units")
    else:
        rec.reasons.insert(0, why_not)
    _heed_the_point(rec, *measured_here(result, seeds, budget))
    ran = {r["strategy"] for r in result.get("summary", [])}
    advised = [rec.strategy] if rec.fractions is None else list(rec.fractions)
    unmeasured = [name for name in advised if ran and name not in ran]
    if unmeasured:  # (QA: a weak augmenter's question_rephrase, advised from a grid that never ran it)
        rec.reasons.append(f"{', '.join(unmeasured)} was not in experiment {exp['name']}'s grid: advising it rests on "
                           "the literature (rephrasing holds up with a weak augmenter), not on your task; add it "
                           "to the grid to measure it")
    rec.reasons.append(f"source experiment: {exp['name']} ({exp['id']}), status {exp['status']}")
    return rec


def _heed_the_point(rec: Recommendation, best: dict[str, Any] | None, said: str) -> None:
    """Where the grid measured this very point, its result outranks a crossover drawn through the
    grid (QA: the first sign change put new questions ahead at |S|=4, Q=16, where answer
    augmentation had measured 23.3% against 10%)."""
    if not said:
        return
    if best is None:
        rec.reasons.insert(0, f"{said}: the intervals overlap, so this point does not settle the choice")
        return
    chosen = rec.strategy if rec.fractions is None else "mix"
    if best["strategy"] == chosen:
        rec.reasons.insert(0, f"{said}: {chosen} is measured best here, as advised")
        return
    rec.reasons.insert(0, f"{said}: {best['strategy']} is measured best here, clear of the others' intervals; "
                          f"chosen over {chosen}, which the crossover alone would give")
    rec.strategy, rec.fractions = best["strategy"], None
