"""Where a run finds answers another run of its store already paid for.

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


class ReuseSource:
    def __init__(self, store: EventStore, run_id: Callable[[], str], clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self._others: bool | None = None  # does another run hold keys? (None: not asked yet)
        self._checked_at = 0.0

    def _worth_looking(self) -> bool:
        if self._others:
            return True  # once true it stays true: keys are never removed
        now = self.clock()
        if self._others is None or now - self._checked_at >= RECHECK_S:
            self._others = self.store.has_keys_outside(self.run_id())
            self._checked_at = now
        return self._others

    def find(self, qid: str) -> tuple[str, int, dict[str, Any]] | None:
        """An identical query settled by another run of this store: (run, seq, its settled payload)."""
        if not self._worth_looking():
            return None
        found = self.store.find_key(qid)
        if found is None or found[0] == self.run_id():
            return None
        ev = self.store.get_event(*found)
        if ev is None or ev.type != QuerySettled.TYPE:
            return None
        return found[0], found[1], ev.payload
