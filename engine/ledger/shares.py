"""A mix's shares after a part hands over what it left unspent.

A mix gives each part a fixed fraction of every limit. A finite part (answer augmentation with
`samples_per_seed`) can end its plan under its share; left there, that rest was never spent and a
run given Q queries spent less than Q. Once such a part's plan has ended and all its items are
finished, its final spend is known: the runner records a `share_handed_over` event, and this is
what the fold makes of it. The part keeps exactly what it spent; what it did not spend goes to the
parts named in the event, in proportion to their fractions. Only freed units move, so no part's
limit ever shrinks below what it already holds, and the shares still add up to the whole budget.

Pure functions of the budget and the recorded hand-overs: a resume (even with a changed budget)
applies the same hand-overs, in their recorded order, to the budget then in effect.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .budget import DIMENSIONS, Amount, BudgetSpec, Limits


@dataclass(frozen=True)
class HandOver:
    """One recorded hand-over: `strategy` ended having spent `spent` (in its share's scope), and
    its unspent share goes to the parts of `to` (name -> fraction)."""

    strategy: str
    spent: Amount
    to: dict[str, float]

    @classmethod
    def of(cls, payload: dict[str, Any]) -> "HandOver":
        return cls(payload["strategy"], Amount.of(payload.get("spent")), dict(payload.get("to") or {}))


def freed(own: Limits, spent: Amount) -> Limits:
    """What a part that spent `spent` leaves of its share `own` (never below nothing: a budget
    lowered at a resume below what was spent frees nothing)."""
    return Limits(**{d: None if getattr(own, d) is None else max(0, getattr(own, d) - getattr(spent, d))
                     for d in DIMENSIONS})


def _plus(a: Limits, b: Limits, sign: int = 1) -> Limits:
    return Limits(**{d: getattr(a, d) if getattr(b, d) is None or getattr(a, d) is None
                     else getattr(a, d) + sign * getattr(b, d) for d in DIMENSIONS})


def hand_over(spec: BudgetSpec, h: HandOver) -> BudgetSpec:
    """`spec` with `h.strategy`'s unspent share moved to the parts of `h.to`. Integer dimensions
    move whole units by largest remainder (Limits.split), so the shares still sum to the total."""
    own = spec.strategies.get(h.strategy)
    weight = sum(h.to.values())
    if own is None or weight <= 0:
        return spec
    rest = freed(own, h.spent)
    gifts = rest.split({name: f / weight for name, f in h.to.items()})
    strategies = dict(spec.strategies)
    strategies[h.strategy] = _plus(own, rest, -1)
    for name, gift in gifts.items():
        strategies[name] = _plus(strategies.get(name, Limits()), gift)
    return replace(spec, strategies=strategies)


def with_hand_overs(spec: BudgetSpec, hand_overs: list[HandOver]) -> BudgetSpec:
    """`spec` with every recorded hand-over applied, in order."""
    for h in hand_overs:
        spec = hand_over(spec, h)
    return spec
