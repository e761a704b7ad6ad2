"""When a mix part hands its unspent share over, and to whom (the fold is ledger/shares.py).

A part may hand over once its plan has ended and every item of it is finished: none running,
none waiting to be run again after the budget refused it, and its share not found spent (an item
of it is then still undone). Only then is its spend final. Its rest goes to the parts still going:
those that have not handed over and are not handing over now. When no part is still going (every
plan ended) nothing is recorded: there is no one to spend it.
"""

from __future__ import annotations

from typing import Any

from ..ledger.budget import Amount
from ..ledger.events import ShareHandedOver, plain_cost


def due(fractions: dict[str, float], ended: set[str], handed: set[str],
        busy: set[str]) -> list[tuple[str, dict[str, float]]]:
    """(part, recipients with their fractions) for each part that may hand over now."""
    ready = [name for name in fractions if name in ended and name not in handed and name not in busy]
    going = {name: f for name, f in fractions.items() if name not in handed and name not in ready}
    if not ready or not going:
        return []
    return [(name, going) for name in ready]


def event(name: str, spent: Amount, to: dict[str, float]) -> ShareHandedOver:
    """The record of `name` handing over, with its spend as the ledger counted it (raw floats: the
    fold compares them with what it counts itself)."""
    return ShareHandedOver(strategy=name, to=dict(to),
                           spent=plain_cost(spent.queries, spent.input_tokens, spent.output_tokens, spent.usd))


def mix_hooks(strategy: Any) -> tuple[dict[str, float], Any, Any]:
    """A mix's fractions and its `ended_parts` / `share_regained` hooks; ({}, None, None) for a
    strategy that does not split the budget (nothing to hand over)."""
    fractions = dict(getattr(strategy, "budget_fractions", lambda: {})() or {})
    ended = getattr(strategy, "ended_parts", None)
    regained = getattr(strategy, "share_regained", None)
    if not fractions or ended is None or regained is None:
        return {}, None, None
    return fractions, ended, regained
