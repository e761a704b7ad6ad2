"""A resume that would count a run's earlier queries as free against a dollar budget is refused.

Dollars are counted per query at the price its session knew, and recorded so (a later price change
never rewrites what was spent). A session that knew no price for a model counted its queries at $0:
resumed with a price for it and a `usd` limit (`--set pricing....`, or `budget.usd` newly set), the
run went on as if those queries had cost nothing, and spent $2.28 against $1 by its own prices (QA).
"""

from __future__ import annotations

from ...store.eventstore import EventStore
from ..errors import ResumeRefused
from ..ledger.ledger import Amount
from .config import RunConfig


def usd_limited(cfg: RunConfig) -> bool:
    b = cfg.budget
    return b.usd is not None or any(r.usd is not None for r in b.roles.values())


def refuse_unpriced_past(store: EventStore, run_id: str, cfg: RunConfig, by_model: dict[str, Amount]) -> None:
    """Raise ResumeRefused when a usd limit is set and a model the run paid queries to had no price
    in the sessions that paid them."""
    if not usd_limited(cfg):
        return
    priced: set[str] = set()
    for e in store.iter_events(run_id, types=["run_started", "run_resumed"]):
        priced |= set(e.payload.get("prices") or {})
    free = sorted(m for m, spent in by_model.items() if spent.queries and m not in priced)
    if free:
        raise ResumeRefused(f"run {run_id} paid queries to {', '.join(map(repr, free))} with no price known, so they "
                            "count $0; a usd budget would take them as free. Resume it without a usd limit, or "
                            "start a new run with the price set (answers it reuses from this one count at its price)")
