"""Copy runs between stores (a laptop's SQLite into the team's PostgreSQL, or back).

A run is copied whole, in one transaction on the destination, and only after its hash chain has
been checked twice: as it is read from the source (every link, and the head the run row records)
and as the destination reads back what it was given, before committing. A run already in the
destination is left alone when it is the same run (a no-op) and extended when the destination
holds a prefix of it (an earlier copy of a run that has gone on since); any other difference is
refused, never overwritten. A run still being extended is not copied (its copy, resumed, would
send the same queries again beside it), nor one that has not finished unless asked to (see
copy_plan, which also takes along the runs a copied run reused answers from), and a generate run is
not copied beside another of its name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .errors import RunNotFound
from .eventstore import EventStore
from .hashing import GENESIS, chain_hash
from .keys import insert_row_keys
from .copy_plan import CopyRefused, lacking, refuse_unfinished, with_sources
from .records import RunInfo, owner_alive
from .sql import text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

PAGE = 5000
IDENTITY = ("name", "kind", "parent_id", "created", "config_hash", "config")


@dataclass
class Copied:
    run_id: str
    name: str
    action: str  # "copied" | "extended" | "identical"
    events: int  # events written to the destination


class _Chain:
    """Checks links one event at a time, so a run of any length is verified in constant memory."""

    def __init__(self, run_id: str, where: str, seq: int = 0, head: str = GENESIS) -> None:
        self.run_id, self.where, self.seq, self.head = run_id, where, seq, head

    def feed(self, seq: int, type_: str, v: int, raw: str | bytes, ts: float, stored_hash: str) -> None:
        if seq != self.seq + 1:
            raise CopyRefused(f"run {self.run_id} in {self.where}: sequence gap after {self.seq} "
                              f"(next stored event is {seq}); not copied")
        data = raw.encode() if isinstance(raw, str) else raw
        if chain_hash(self.head, seq, type_, v, ts, data) != stored_hash:
            raise CopyRefused(f"run {self.run_id} in {self.where}: hash chain broken at seq {seq}; not copied")
        self.seq, self.head = seq, stored_hash

    def end(self, last_seq: int, head_hash: str) -> None:
        if (self.seq, self.head) != (last_seq, head_hash):
            raise CopyRefused(f"run {self.run_id} in {self.where}: its log ends at seq {self.seq} but the run "
                              f"records {last_seq} events (cut or altered); not copied")


def _rows(conn: Connection, run_id: str, after: int, upto: int) -> Iterator[tuple[Any, ...]]:
    """(run_id, seq, type, v, payload, ts, hash) for after < seq <= upto, a range of PAGE
    sequence numbers at a time (see engines.page_sql for why not LIMIT)."""
    q = text("SELECT run_id, seq, type, schema_version, payload, ts, hash FROM events "
             "WHERE run_id = :id AND seq > :after AND seq <= :upto ORDER BY seq")
    while after < upto:
        end = min(after + PAGE, upto)
        yield from (tuple(r) for r in conn.execute(q, {"id": run_id, "after": after, "upto": end}).all())
        after = end


def _differs(src: RunInfo, dst: RunInfo) -> str | None:
    for field in IDENTITY:
        if getattr(src, field) != getattr(dst, field):
            return field
    return None


def _refuse_live(info: RunInfo, where: str) -> None:
    """A run whose holder is alive, its lease fresh: QA resumed such a copy while the original ran on,
    and the provider got 222 requests for a budget of 150, with both stores' audits ok."""
    if info.status != "running" or not info.owner or info.heartbeat is None:
        return
    ttl = float((info.config.get("run") or {}).get("lease_ttl_s", 30.0))
    if time.time() - info.heartbeat <= ttl and owner_alive(info.owner):
        raise CopyRefused(f"run {info.id} ({info.name}) is still running in {where} (held by {info.owner}); copy "
                          "it once it has finished or stopped: a copy resumed beside it would pay for its queries "
                          "twice")


def _refuse_name_clash(info: RunInfo, dst: EventStore) -> None:
    """Generate runs are found by name, and a store holds one of each (see EventStore.start_run):
    a second would make the name name nothing (`show pg1`: "'pg1' names 2 runs")."""
    if info.kind != "generate":
        return
    other = next((r for r in dst.list_runs(name=info.name, kind="generate") if r.id != info.id and r.last_seq > 0),
                 None)
    if other is not None:
        raise CopyRefused(f"run {info.id} ({info.name}): {dst.where} already has another run named {info.name!r} "
                          f"({other.id}); not copied")


def _prefix_head(src: EventStore, run_id: str, seq: int) -> str | None:
    with src.engine.connect() as conn:
        row = conn.execute(text("SELECT hash FROM events WHERE run_id = :id AND seq = :s"),
                           {"id": run_id, "s": seq}).first()
    return None if row is None else row[0]


def copy_run(src: EventStore, dst: EventStore, info: RunInfo, unfinished: bool = False) -> Copied:
    """Copy one run (see the module docstring); raises CopyRefused and writes nothing if it cannot.
    `unfinished`: a generate run that has not finished may be copied (see copy_plan)."""
    _refuse_live(info, src.where)
    if not unfinished:
        refuse_unfinished(info, src.where)
    try:
        have: RunInfo | None = dst.get_run(info.id)
    except RunNotFound:
        have = None
        _refuse_name_clash(info, dst)
    start_seq, start_head = 0, GENESIS
    if have is not None:
        field = _differs(info, have)
        if field is not None:
            raise CopyRefused(f"run {info.id} ({info.name}) differs in {dst.where} ({field} is not the same); "
                              "refusing to overwrite it")
        if (have.last_seq, have.head_hash) == (info.last_seq, info.head_hash):
            return Copied(info.id, info.name, "identical", 0)
        prefix = GENESIS if have.last_seq == 0 else _prefix_head(src, info.id, have.last_seq)
        if have.last_seq > info.last_seq or prefix != have.head_hash:
            raise CopyRefused(f"run {info.id} ({info.name}) in {dst.where} has events that {src.where} does not "
                              f"({have.last_seq} there, {info.last_seq} here); refusing to overwrite it")
        start_seq, start_head = have.last_seq, have.head_hash
    with dst._begin() as out:
        if have is None:
            out.execute(text("INSERT INTO runs (id, name, kind, parent_id, created, config, config_hash, status, "
                             "last_seq, head_hash, owner, heartbeat) VALUES (:id, :name, :kind, :parent, :created, "
                             ":config, :hash, :status, :last, :head, NULL, NULL)"), _run_params(info))
        else:
            res = out.execute(text("UPDATE runs SET last_seq = :last, head_hash = :head, status = :status "
                                   "WHERE id = :id AND last_seq = :was"), {**_run_params(info), "was": start_seq})
            if res.rowcount != 1:
                raise CopyRefused(f"run {info.id} changed in {dst.where} while it was being copied; try again")
        written = _copy_events(src, dst, out, info, start_seq, start_head)
    return Copied(info.id, info.name, "extended" if have is not None else "copied", written)


def _run_params(info: RunInfo) -> dict[str, Any]:
    from .hashing import canonical

    return {"id": info.id, "name": info.name, "kind": info.kind, "parent": info.parent_id, "created": info.created,
            "config": canonical(info.config).decode(), "hash": info.config_hash, "status": info.status,
            "last": info.last_seq, "head": info.head_hash}


def _copy_events(src: EventStore, dst: EventStore, out: Connection, info: RunInfo, start_seq: int,
                 start_head: str) -> int:
    read = _Chain(info.id, src.where, start_seq, start_head)
    batch: list[tuple[Any, ...]] = []
    written = 0
    with src._connect() as conn:
        for row in _rows(conn, info.id, start_seq, info.last_seq):
            read.feed(*row[1:])
            batch.append(row)
            if len(batch) >= PAGE:
                dst._insert_events(out, batch)
                insert_row_keys(out, batch)
                written, batch = written + len(batch), []
    if batch:
        dst._insert_events(out, batch)
        insert_row_keys(out, batch)
        written += len(batch)
    read.end(info.last_seq, info.head_hash)
    back = _Chain(info.id, dst.where, start_seq, start_head)  # what the destination will hold, before commit
    for row in _rows(out, info.id, start_seq, info.last_seq):
        back.feed(*row[1:])
    back.end(info.last_seq, info.head_hash)
    return written


def copy_runs(src: EventStore, dst: EventStore, refs: Iterable[str] = (),
              unfinished: bool = False) -> Iterator[Copied | CopyRefused]:
    """Every named run (all of the source's when none are named) and the runs they reused answers
    from, each in its own transaction; a refused run is yielded as its error and the others go on.
    `unfinished` lets the named runs be copied before they have finished (never the ones taken along)."""
    refs = list(refs)
    infos = [src.resolve(r) for r in refs] if refs else src.list_runs()
    named = {info.id for info in infos} if refs else set()
    order, sources = with_sources(src, infos)
    for info in order:
        missing = lacking(dst, sources[info.id])
        if missing:
            yield CopyRefused(f"run {info.id} ({info.name}) reuses answers settled by run {', '.join(missing)}, "
                              f"which {dst.where} does not hold and which was not copied; not copied (its copy "
                              "would fail audit)")
            continue
        try:
            yield copy_run(src, dst, info, unfinished=unfinished and info.id in named)
        except CopyRefused as exc:
            yield exc
