"""What the ledger reports: totals, the snapshot `show` and `audit` print, and the full state two
ledgers are compared on. A mixin of `Ledger`: reading, never folding."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .budget import Amount, BudgetSpec
from .idset import IntSet


class LedgerReport:
    spec: BudgetSpec
    spent: dict[str, Amount]
    reserved: dict[str, Amount]
    by_role: dict[str, Amount]
    by_strategy: dict[str, Amount]
    by_model: dict[str, Amount]
    reused: Amount
    queries: dict[str, Any]
    settled: IntSet
    interrupted: dict[str, int]
    counts: dict[str, int]
    in_flight: int
    batched: dict[str, str]
    batches: dict[str, dict[str, Any]]
    pacing: dict[str, dict[str, Any]]
    last_seq: int
    violations: list[Any]
    hand_overs: list[Any]

    def state(self) -> dict[str, Any]:
        """Everything the fold has accumulated, as plain data: two ledgers that replayed the same
        events compare equal on it, whatever path the events took (live, replayed, resumed)."""
        def table(t: dict[str, Amount]) -> dict[str, Any]:
            return {k: asdict(v) for k, v in sorted(t.items())}  # raw floats: exact comparison

        return {
            "spent": table(self.spent), "reserved": table(self.reserved), "by_role": table(self.by_role),
            "by_strategy": table(self.by_strategy), "by_model": table(self.by_model),
            "queries": {k: asdict(q) for k, q in sorted(self.queries.items())},
            "settled": sorted(self.settled), "reused": asdict(self.reused),
            "interrupted": dict(sorted(self.interrupted.items())),
            "counts": dict(self.counts), "in_flight": self.in_flight,
            "batched": dict(sorted(self.batched.items())), "batches": dict(sorted(self.batches.items())),
            "pacing": dict(sorted(self.pacing.items())),
            "hand_overs": [(h.strategy, asdict(h.spent), dict(h.to)) for h in self.hand_overs],
            "shares": {k: v.as_dict() for k, v in sorted(self.spec.strategies.items())},
            "last_seq": self.last_seq, "violations": [(v.seq, v.message) for v in self.violations],
        }

    def total_spent(self) -> Amount:
        return self.spent.get("total") or Amount()

    def paid(self) -> Amount:
        """What was bought, in every role (counted against the budget or not): all spend less what
        was reused from the store."""
        paid = Amount()
        for amount in self.by_role.values():
            paid.add(amount)
        paid.add(self.reused, -1)
        return paid

    def total_reserved(self) -> Amount:
        return self.reserved.get("total") or Amount()

    def snapshot(self) -> dict[str, Any]:
        return {
            "spent": self.total_spent().as_dict(),
            "paid": self.paid().as_dict(),
            "reused": self.reused.as_dict(),
            "reserved": self.total_reserved().as_dict(),
            "budget": self.spec.total.as_dict(),
            "by_role": {k: v.as_dict() for k, v in sorted(self.by_role.items())},
            "by_strategy": {k: v.as_dict() for k, v in sorted(self.by_strategy.items())},
            "by_model": {k: v.as_dict() for k, v in sorted(self.by_model.items())},
            "counts": dict(self.counts),
            "in_flight": self.in_flight,
        }
