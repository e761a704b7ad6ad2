"""Amounts in every budget dimension, the limits on them, and which limits apply to a query.

Plain values with no behaviour beyond arithmetic: the ledger folds events into them, the config
builds them, and a run records its `BudgetSpec` in its first event (`budget_from_dict` reads it back).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

EPS = 1e-9
DIMENSIONS = ("queries", "input_tokens", "output_tokens", "usd")


@dataclass
class Amount:
    queries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0

    @classmethod
    def of(cls, d: dict[str, Any] | None) -> "Amount":
        if not d:
            return cls()
        return cls(int(d.get("queries", 0)), int(d.get("input_tokens", 0)), int(d.get("output_tokens", 0)),
                   float(d.get("usd", 0.0)))

    def add(self, other: "Amount", sign: int = 1) -> None:
        self.queries += sign * other.queries
        self.input_tokens += sign * other.input_tokens
        self.output_tokens += sign * other.output_tokens
        self.usd += sign * other.usd

    def as_dict(self) -> dict[str, Any]:
        return {"queries": self.queries, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "usd": round(self.usd, 9)}


@dataclass(frozen=True)
class Limits:
    queries: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    usd: float | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, d) is None for d in DIMENSIONS)

    @functools.cached_property
    def bound(self) -> tuple[tuple[str, Any], ...]:
        """(dimension, limit) of each limit set: what a check against these limits looks at. The
        ledger checks a query's limits at its reservation and again at its settlement, and nearly
        every run sets one or two of the four. (Limits are frozen: found once.)"""
        return tuple((d, getattr(self, d)) for d in DIMENSIONS if getattr(self, d) is not None)

    def scaled(self, fraction: float) -> "Limits":
        """A share of these limits (for mixes). Integer dimensions round down so shares never sum above."""
        def part(v: Any, integral: bool) -> Any:
            if v is None:
                return None
            return int(v * fraction + EPS) if integral else v * fraction
        return Limits(part(self.queries, True), part(self.input_tokens, True), part(self.output_tokens, True),
                      part(self.usd, False))

    def split(self, fractions: dict[str, float]) -> dict[str, "Limits"]:
        """Shares of these limits for fractions summing to 1 (a mix's parts). Rounding every share
        down lost up to one unit per part (Q = 10 in thirds gave 3 + 3 + 3), so integer dimensions
        give the units left over to the largest remainders (the first listed on ties): the shares
        add up to the limit exactly, and each is within one of its fraction."""
        shares = {name: self.scaled(f) for name, f in fractions.items()}
        out = {name: limits.as_dict() for name, limits in shares.items()}
        for d in DIMENSIONS[:3]:
            total = getattr(self, d)
            if total is None or not fractions:
                continue
            left = total - sum(out[name][d] for name in fractions)
            by_remainder = sorted(fractions, key=lambda n: -(total * fractions[n] - out[n][d]))
            for name in by_remainder[:max(0, left)]:
                out[name][d] += 1
        return {name: Limits(**v) for name, v in out.items()}

    def as_dict(self) -> dict[str, Any]:
        return {d: getattr(self, d) for d in DIMENSIONS}


@dataclass(frozen=True)
class BudgetSpec:
    total: Limits = Limits()
    roles: dict[str, Limits] = field(default_factory=dict)
    strategies: dict[str, Limits] = field(default_factory=dict)
    counted_roles: frozenset[str] | None = None  # roles that count against `total`; None = every role

    def scopes(self, role: str, strategy: str) -> list[tuple[str, Limits]]:
        """The budget scopes a query of `role` for `strategy` counts in, with their limits; read-only.
        Asked several times for every event the ledger folds, always for the same few pairs, and a
        spec never changes (it is frozen): found once per pair."""
        found = self._scopes.get((role, strategy))
        if found is None:
            found = self._scopes[(role, strategy)] = self._find_scopes(role, strategy)
        return found

    def bounds(self, role: str, strategy: str) -> bool:
        """Whether some limit counts a query of `role` for `strategy` (asked for every query, so
        found once per pair like `scopes`)."""
        found = self._bounds.get((role, strategy))
        if found is None:
            found = self._bounds[(role, strategy)] = any(not lim.is_empty() for _, lim in self.scopes(role, strategy))
        return found

    @functools.cached_property
    def _bounds(self) -> dict[tuple[str, str], bool]:
        return {}

    @functools.cached_property
    def _scopes(self) -> dict[tuple[str, str], list[tuple[str, Limits]]]:
        return {}  # (cached_property writes the instance's __dict__ directly, which frozen allows)

    def _find_scopes(self, role: str, strategy: str) -> list[tuple[str, Limits]]:
        out: list[tuple[str, Limits]] = []
        counted = self.counted_roles is None or role in self.counted_roles
        if counted:
            out.append(("total", self.total))
        if role in self.roles:
            out.append((f"role:{role}", self.roles[role]))
        # A strategy's share is a fraction of the total, so it counts what the total counts: with
        # counted_roles = ["teacher"], a mix part's augmenter calls must not eat its teacher share.
        if strategy in self.strategies and counted:
            out.append((strategy_scope(strategy), self.strategies[strategy]))
        return out

    def limits_of(self, scope: str) -> Limits | None:
        """The limits of a ledger scope ("total", "role:R", "strategy:S"), None if this spec has none."""
        kind, _, name = scope.partition(":")
        if kind == "total":
            return self.total
        return (self.roles if kind == "role" else self.strategies if kind == "strategy" else {}).get(name)

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total.as_dict(), "roles": {k: v.as_dict() for k, v in self.roles.items()},
                "strategies": {k: v.as_dict() for k, v in self.strategies.items()},
                "counted_roles": sorted(self.counted_roles) if self.counted_roles is not None else None}


def strategy_scope(name: str) -> str:
    """The ledger's key for a strategy's share (what `spent`/`reserved` are counted under): what a
    mix part spent, for a hand-over, is read under this one name."""
    return f"strategy:{name}"


def budget_from_dict(d: dict[str, Any] | None) -> BudgetSpec:
    """The BudgetSpec recorded in a run's config snapshot (see engine.run.config)."""
    d = d or {}

    def lim(x: dict[str, Any] | None) -> Limits:
        x = x or {}
        return Limits(x.get("queries"), x.get("input_tokens"), x.get("output_tokens"), x.get("usd"))

    roles = d.get("counted_roles")
    return BudgetSpec(
        total=lim(d.get("total")),
        roles={k: lim(v) for k, v in (d.get("roles") or {}).items()},
        strategies={k: lim(v) for k, v in (d.get("strategies") or {}).items()},
        counted_roles=frozenset(roles) if roles is not None else None,
    )
