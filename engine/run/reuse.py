"""Where a run finds answers another run of its store already paid for.

Only answers of the same model *at the same endpoint* count: a query's identity names provider,
model and parameters, not where the model is served, and two servers answering to one model name
(a test server and the real one, a quantized copy) are two teachers. An answer is reused when the
run that paid for it recorded a model section of that name with the same base URL.

Looking a query up costs a store round trip on the event loop (most of a millisecond through
SQLAlchemy), which at a few hundred queries a second was a fifth of the engine's CPU. Most runs
share their store with nothing they could reuse, so the lookup is skipped while no other run of
the store has indexed a settled query; that fact is rechecked every few seconds, so runs writing
the store at the same time still find each other's answers soon after they exist.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ...store.eventstore import EventStore
from ..ledger.events import QuerySettled

RECHECK_S = 5.0


def endpoints_of(config: dict[str, Any]) -> set[tuple[str, str]]:
    """(model, base URL) of every model section of a recorded run config (the URL "" for a
    provider's own default)."""
    return set(endpoints_here(config).values())


def endpoints_here(config: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Config section -> (model, base URL), for a run's own recorded config."""
    return {name: (str(sec["model"]), str(sec.get("base_url") or "").rstrip("/"))
            for name, sec in config.items() if isinstance(sec, dict) and sec.get("model")}


class ReuseSource:
    def __init__(self, store: EventStore, run_id: Callable[[], str], clock: Callable[[], float] = time.monotonic,
                 here: dict[str, tuple[str, str]] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self.here = here  # config section -> (model, base URL) of this run's endpoints (None: any endpoint)
        self._others: bool | None = None  # does another run hold keys? (None: not asked yet)
        self._checked_at = 0.0
        self._served: dict[str, set[tuple[str, str]]] = {}  # source run -> its endpoints

    def _worth_looking(self) -> bool:
        if self._others:
            return True  # once true it stays true: keys are never removed
        now = self.clock()
        if self._others is None or now - self._checked_at >= RECHECK_S:
            self._others = self.store.has_keys_outside(self.run_id())
            self._checked_at = now
        return self._others

    def find(self, qid: str, section: str = "teacher") -> tuple[str, int, dict[str, Any]] | None:
        """An identical query settled by another run of this store at the endpoint this run's
        `section` describes: (run, seq, its settled payload)."""
        if not self._worth_looking():
            return None
        found = self.store.find_key(qid)
        if found is None or found[0] == self.run_id() or not self._same_endpoint(found[0], section):
            return None
        ev = self.store.get_event(*found)
        if ev is None or ev.type != QuerySettled.TYPE:
            return None
        return found[0], found[1], ev.payload

    def _same_endpoint(self, source_run: str, section: str) -> bool:
        if self.here is None or section not in self.here:
            return True
        served = self._served.get(source_run)
        if served is None:
            served = self._served[source_run] = endpoints_of(self.store.get_run(source_run).config or {})
        return self.here[section] in served
