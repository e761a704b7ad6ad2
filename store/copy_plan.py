"""Which runs a copy takes along, and which it leaves where they are.

Two ways a copy went wrong in QA, each with exit 0:
- A run that reused answers settled by other runs of its store (`query_reused` names the source
  run and event) was copied alone: its copy failed `audit` ("source ... does not exist"). So the
  runs a copied run reused from go with it, before it.
- A killed run is not live, so it was copied; resumed in both stores, it paid for its remaining
  queries twice (316 requests for a budget of 200). So a generate run that has not finished is
  copied only when asked for by name with `--unfinished` (moving it to resume it in one store).
"""

from __future__ import annotations

import json
from typing import Iterable

from .errors import RunNotFound, StoreError
from .eventstore import EventStore
from .records import FINISHED, RunInfo
from .sql import text


class CopyRefused(StoreError):
    """This run cannot be copied (broken chain, or a different run under its id in the destination)."""


def reused_sources(src: EventStore, run_id: str) -> dict[str, int]:
    """The other runs whose answers `run_id` reused, each with the last of its events that is needed."""
    with src._connect() as conn:
        rows = conn.execute(text("SELECT payload FROM events WHERE run_id = :id AND type = 'query_reused'"),
                            {"id": run_id}).all()
    out: dict[str, int] = {}
    for (payload,) in rows:
        p = json.loads(payload)
        source = p.get("source_run")
        if source and source != run_id:
            out[source] = max(out.get(source, 0), int(p.get("source_seq") or 0))
    return out


def with_sources(src: EventStore, infos: Iterable[RunInfo]) -> tuple[list[RunInfo], dict[str, dict[str, int]]]:
    """`infos` with the runs they reused from (and theirs), each source before the runs that need
    it, each run once; and every run's sources."""
    order: list[RunInfo] = []
    sources: dict[str, dict[str, int]] = {}
    seen: set[str] = set()

    def visit(info: RunInfo) -> None:
        if info.id in seen:
            return
        seen.add(info.id)
        sources[info.id] = reused_sources(src, info.id)
        for source_id in sources[info.id]:
            try:
                visit(src.get_run(source_id))
            except RunNotFound:  # gone from the source too: its copy will say so (see `lacking`)
                pass
        order.append(info)

    for info in infos:
        visit(info)
    return order, sources


def lacking(dst: EventStore, needed: dict[str, int]) -> list[str]:
    """The source runs (of `needed`: run id -> last event needed) that `dst` does not hold far enough."""
    out = []
    for run_id, seq in needed.items():
        try:
            if dst.get_run(run_id).last_seq >= seq:
                continue
        except RunNotFound:
            pass
        out.append(run_id)
    return out


def refuse_unfinished(info: RunInfo, where: str) -> None:
    if info.kind == "generate" and info.status not in FINISHED:
        raise CopyRefused(f"run {info.id} ({info.name}) is {info.status} in {where}: resumed in both stores, it "
                          "would pay for its remaining queries twice; resume it to its end first, or name it with "
                          "--unfinished to move it (and resume it in one store only)")
