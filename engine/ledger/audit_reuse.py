"""What `audit` checks of answers reused from other runs of the store (`query_reused`).

A reused answer must be exactly what its source settled: the event it names exists, is a settled
query, of the same query id (which derives from the identity key the reuse records), with the
same text and token usage (its dollars are at the reusing run's price). Paid and reused amounts are
reported apart by the ledger itself.
"""

from __future__ import annotations

from typing import Any, Callable

from ...store.eventstore import EventStore
from .ledger import Violation
from .events import QueryReused, QuerySettled

ReuseCheck = Callable[[dict[str, Any]], "str | None"]


def reuse_problem(store: EventStore, run_id: str, p: dict[str, Any]) -> str | None:
    """What is wrong with a reused answer, checked against the event it names; None if nothing."""
    where = f"source {p['source_run']}#{p['source_seq']}"
    if p["query_id"] != "q" + str(p.get("key", ""))[:19]:
        return "its query id does not derive from its identity key"
    if p["source_run"] == run_id:
        return f"{where} is this run itself (a repeat within a run is not a reuse)"
    try:
        source = store.get_event(p["source_run"], int(p["source_seq"]))
    except Exception as exc:  # noqa: BLE001 - any read failure is a finding, not a crash
        return f"{where} cannot be read ({exc})"
    if source is None:
        return f"{where} does not exist"
    if source.type != QuerySettled.TYPE:
        return f"{where} is a {source.type} event, not a settled query"
    sp = source.payload
    if sp.get("query_id") != p["query_id"]:
        return f"{where} settled another query ({sp.get('query_id')})"
    if sp.get("text") != p.get("text"):
        return f"{where} has a different answer text"
    # (dollars apart: a reuse counts them at its own run's price)
    tokens = ("queries", "input_tokens", "output_tokens")
    theirs, mine = dict(sp.get("actual") or {}), dict(p.get("actual") or {})
    if [theirs.get(k) for k in tokens] != [mine.get(k) for k in tokens]:
        return f"{where} has a different usage ({sp.get('actual')} != {p.get('actual')})"
    return None


class ReuseAudit:
    """Fed every event; checks each `query_reused` with `check` (None: nothing is checked)."""

    def __init__(self, check: ReuseCheck | None) -> None:
        self.check = check
        self.violations: list[Violation] = []

    def feed(self, seq: int, type_: str, p: dict[str, Any]) -> None:
        if type_ == QueryReused.TYPE and self.check is not None:
            problem = self.check(p)
            if problem is not None:
                self.violations.append(Violation(seq, f"reused query {p['query_id']}: {problem}"))
