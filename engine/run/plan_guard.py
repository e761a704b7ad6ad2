"""What the runner holds a strategy's plan to: the contract a plugin cannot be trusted to keep.

A plan is walked lazily and ended by the budget, so two mistakes in a plugin would run forever or
twice: a key yielded twice, and items that only ever get answers the run already holds (a
`sample_index` left out: every round asks the same queries, and a settled query is free). Both,
and a plan that raises, end the run as failed with one line naming the cause."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from ..api import PlanItem
from ..errors import PluginFailed
from ..ledger.idset import IntSet
from ..plugin_faults import guarded_iter


def walk_plan(strategy: Any, name: str, on_failure: Callable[[str], None]) -> Iterator[PlanItem]:
    """`strategy.plan()`, checked item by item; on a failure `on_failure(reason)` and the walk ends.
    `name` is how messages name the strategy (its plugin and distribution when third-party).

    The keys seen are kept as their hashes (`IntSet`): a set of the key strings was the largest
    part of a long run's memory growth (about 80 bytes an item, 4 MB at 50,000 items). Two keys
    sharing a 64-bit hash would be taken for one yielded twice: under one run in 10^7 at a million
    items, against a plan that would otherwise grow memory without bound."""
    seen = IntSet()
    try:
        for item in guarded_iter(f"{name} plan()", strategy.plan()):
            if not isinstance(item, PlanItem):
                raise PluginFailed(f"{name} plan() yielded {type(item).__name__}, not a PlanItem")
            key_hash = hash(item.key)
            if key_hash in seen:
                raise PluginFailed(f"{name} plan() yielded the item key {item.key!r} twice; "
                                   "keys must be unique within a run")
            seen.add(key_hash)
            yield item
    except PluginFailed as exc:
        on_failure(str(exc))


NO_ITEMS = "the plan had no items"


def nothing_planned(name: str, seeds: int, source: str) -> str:
    """Why a run ended `completed` having asked nothing, as far as the engine can tell: its strategy
    planned no item for the seeds it was given (the seeds themselves were checked: a source that gives
    none is refused before the run starts). Said as a run warning; the run ended silently before."""
    return (f"the plan has no items: {name} planned nothing for {seeds} seed{'' if seeds == 1 else 's'} "
            f"from {source}, so nothing was asked and the dataset is empty; check the strategy's options")


class FreeItemWatch:
    """Counts items in a row that took nothing from the budget (every answer one the run already
    held, or no question asked). Replayed items do that for a while after a resume, at most the
    items in flight at the kill, so `limit` is set above that; a plan that keeps doing it would
    never end."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.streak = 0

    def observe(self, strategy: str, fresh: int) -> str | None:
        """An item ended having taken `fresh` queries from the budget; the reason to stop, if any."""
        if fresh:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak < self.limit:
            return None
        return (f"strategy {strategy!r}: its last {self.streak} items took nothing from the budget (each answer "
                "was one this run already had), so its plan would never end; give each sample its own query "
                "(a distinct sample_index or prompt)")


class UnboundedSpendWatch:
    """Counts items in a row that paid only for roles no budget limit counts: `counted_roles`
    leaves them out of the total and no `[budget.roles.NAME]` bounds them (the paper's setting:
    Q counts teacher answers, the augmenter is paid on top). Nothing in the budget ends such items,
    so an augmenter whose every question is refused before the teacher is asked (copies, near
    duplicates, checks saying NO, replies cut off), or a plan that never asks a counted role,
    would be paid without end. Replayed items (nothing paid) leave the count as it is."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.streak = 0

    def observe(self, strategy: str, fresh: int, bounded: int) -> str | None:
        """An item ended having paid `fresh` queries, `bounded` of them counted by a limit."""
        if bounded:
            self.streak = 0
            return None
        if not fresh:
            return None
        self.streak += 1
        if self.streak < self.limit:
            return None
        return (f"strategy {strategy!r}: its last {self.streak} items paid only for roles no budget limit counts, "
                "so the budget would never end the run; count those roles ([budget] counted_roles) or give "
                "them a limit of their own ([budget.roles.NAME])")
