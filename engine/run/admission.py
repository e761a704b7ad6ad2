"""The budget's one gate: whether a query, or a whole plan item, may start.

Two questions, one check each, both answered by the ledger's `overruns` (spent + reserved + this,
against every limit that applies):

- dispatch asks `check(role, strategy, worst)` before it reserves a request's worst case;
- the runner asks `fits(item, cost)` before it starts a plan item: the item's worst case on top of
  what the items already running may still ask for (their *pledges*). An item pledges its worst case
  when it starts, and each query it asks turns one pledge into a real reservation (`release`).

Both price a query with the same `worst_case`. Before a strategy has written its prompt its size
is unknown, so an item's pledge counts queries and output tokens only; the exact check at dispatch
covers prompt tokens and dollars, and an item that then cannot get a query reserved is what ends a
run under those limits.
"""

from __future__ import annotations

from typing import Any, Callable

from ..api import ChatRequest, PlanItem
from ..errors import PluginFailed
from ..redact import one_line
from ..ledger.ledger import Amount, Ledger
from ..scheduler.endpoint import Endpoint
from .teacher_contract import prompt_bound

# What an item's pledge is checked on: a prompt's size is unknown before the strategy writes it.
ITEM_DIMENSIONS = ("queries", "output_tokens")


def worst_case(ep: Endpoint, request: ChatRequest | None = None) -> Amount:
    """The most one request to `ep` can cost: its prompt's upper bound (billed once however many
    samples; none before the prompt is written) and `max_tokens` for each of its `n` completions."""
    if request is None:
        prompt, max_tokens, n = 0, int(ep.params.get("max_tokens", 256)), 1
    else:
        prompt, max_tokens, n = prompt_bound(ep.teacher, request, ep.who), request.max_tokens, request.n
    out = max_tokens * n
    usd = ep.price.cost(prompt, out) if ep.price else 0.0
    return Amount(queries=n, input_tokens=prompt, output_tokens=out, usd=usd)


class Admission:
    def __init__(self, ledger: Ledger, endpoints: dict[str, Endpoint], strategy: Any, verifier: Any,
                 warn: Callable[[str, str], None] | None = None) -> None:
        self.ledger = ledger
        self.warn = warn  # (kind, message): a run warning, said once (see `release`)
        self._over_asked = False
        self.endpoints = endpoints
        self.strategy = strategy
        self.verifier = verifier
        self._pledged: dict[str, Amount] = {}  # scope -> what running items may still ask for
        self._item_pledges: dict[str, dict[str, int]] = {}  # item key -> queries per role not yet asked
        self._needs: dict[tuple[str, tuple[tuple[str, int], ...]], dict[str, Amount]] = {}  # see _need

    def route(self, role: str) -> str:
        """The endpoint serving `role` (roles without a model section of their own use the teacher's)."""
        return role if role in self.endpoints else "teacher"

    def worst_case(self, role: str, request: ChatRequest | None = None) -> Amount:
        return worst_case(self.endpoints[self.route(role)], request)

    def check(self, role: str, strategy: str, worst: Amount) -> str | None:
        """None if `worst` fits under every limit that applies, else the limit it would break."""
        return self.ledger.headroom(role, strategy, worst)

    # ---- whole plan items -----------------------------------------------------------------
    def item_cost(self, item: PlanItem) -> dict[str, int]:
        """Worst-case queries per role for one item: the strategy's plus the verifier's."""
        cost = dict(_counts(self.strategy.item_cost(item), f"strategy {item.strategy!r}"))
        for role, n in _counts(self.verifier.item_cost(), f"verifier {getattr(self.verifier, 'name', '?')!r}").items():
            cost[role] = cost.get(role, 0) + n
        return cost

    def _need(self, item: PlanItem, cost: dict[str, int]) -> dict[str, Amount]:
        """`cost` priced and summed per budget scope; read-only. Asked four times per item with the
        same few shapes of cost, and nothing in a run changes a role's worst case or a budget's
        scopes: priced once per shape."""
        key = (item.strategy, tuple(cost.items()))
        need = self._needs.get(key)
        if need is None:
            need = self._needs[key] = self._price(item.strategy, cost)
        return need

    def _price(self, strategy: str, cost: dict[str, int]) -> dict[str, Amount]:
        need: dict[str, Amount] = {}
        for role, n in cost.items():
            one = self.worst_case(role)
            for scope, _ in self.ledger.spec.scopes(role, strategy):
                amount = need.setdefault(scope, Amount())
                for _ in range(n):
                    amount.add(one)
        return need

    def fits(self, item: PlanItem, cost: dict[str, int]) -> bool:
        """Whether `item`'s worst case fits on top of spent, reserved and every running item's pledge."""
        limits = {}
        for role in cost:
            limits.update(self.ledger.spec.scopes(role, item.strategy))
        for scope, need in self._need(item, cost).items():
            extra = Amount()
            extra.add(self._pledged.get(scope) or Amount())
            extra.add(need)
            if next(self.ledger.overruns(scope, limits[scope], extra, ITEM_DIMENSIONS), None) is not None:
                return False
        return True

    def pledge(self, item: PlanItem, cost: dict[str, int]) -> None:
        """`item` starts: hold its worst case against later items until its queries are asked."""
        self._item_pledges[item.key] = dict(cost)
        self._add(item, cost, +1)

    def release(self, item: PlanItem, role: str) -> None:
        """One query of `item` is about to be reserved for real: its pledge for that query ends."""
        left = self._item_pledges.get(item.key)
        if left and left.get(role, 0) > 0:
            left[role] -= 1
            self._add(item, {role: 1}, -1)
        elif left is not None:
            self._asked_beyond(item, role)

    def _asked_beyond(self, item: PlanItem, role: str) -> None:
        """An item asked more than its item_cost() declared: items are started side by side by their
        declared worst case, so such an item may find the budget taken by the others and be cut short
        (its queries paid, no sample), which QA saw as budget lost with nothing said."""
        if self._over_asked or self.warn is None:
            return
        self._over_asked = True
        declared = self.item_cost(item).get(role, 0)
        self.warn("item_cost_exceeded", (
            f"item {item.key!r} of strategy {item.strategy!r} asked more {role} queries than its item_cost() "
            f"(with the verifier's) declares ({declared}): items run side by side by their declared worst case, so "
            "one that asks more may be cut short by the budget, its queries paid and no sample made; declare the "
            "most an item can ask"))

    def finish(self, item: PlanItem) -> None:
        """`item` ended: whatever it did not ask for is no longer pledged."""
        self._add(item, self._item_pledges.pop(item.key, {}), -1)

    def _add(self, item: PlanItem, cost: dict[str, int], sign: int) -> None:
        for scope, amount in self._need(item, cost).items():
            self._pledged.setdefault(scope, Amount()).add(amount, sign)


def _counts(cost: Any, who: str) -> dict[str, int]:
    """A plugin's item_cost(), if it is what admission can price: a string in it made the first
    item's pricing raise deep in the run's task group (a traceback, the run left `interrupted`)."""
    if not isinstance(cost, dict) or not all(type(k) is str and type(n) is int and n >= 0 for k, n in cost.items()):
        raise PluginFailed(f"{who} returned {one_line(repr(cost), 200)} from item_cost(); expected a dict of "
                           "role -> whole number of queries, 0 or more")
    return cost
