"""What a run says when it must stop because its events can no longer be written.

Two causes look alike to the event writer (a commit refused) but mean different things to a
person: the store cannot be written (disk full, read-only folder, a broken file), or another
process took the run over while this one was frozen past its lease. Either way the run stops at
once and sends nothing more; what it committed before stays, and the message says which case it
is, who holds the run now, and what to do.
"""

from __future__ import annotations

import socket

from ...store.eventstore import ConcurrencyError, EventStore, StoreError
from ..redact import scrub


class RunAborted(StoreError):
    """The run stopped because its events could not be committed; the message says why."""


class LeaseLost(RunAborted):
    """Another process took the run over (this one was paused past its lease)."""


def _who(owner: str | None) -> str:
    """`host:pid:token` as words."""
    if not owner:
        return "another process (which has since released the run)"
    try:
        host, pid, _ = owner.rsplit(":", 2)
    except ValueError:
        return f"another process ({owner})"
    where = "this host" if host == socket.gethostname() else f"host {host}"
    return f"process {pid} on {where}"


def _current_owner(store: EventStore, run_id: str) -> tuple[bool, str | None]:
    try:
        return True, store.get_run(run_id).owner
    except Exception:  # the store may be unreadable as well as unwritable
        return False, None


def abort_error(store: EventStore, run_id: str, owner: str, cause: BaseException, durable_seq: int,
                lease_ttl_s: float) -> RunAborted:
    """The one-line error for a run whose writer failed with `cause` after committing `durable_seq`."""
    kept = (f"everything it recorded (events 1..{durable_seq}) is kept" if durable_seq
            else "nothing had been recorded yet")
    if isinstance(cause, ConcurrencyError):
        readable, holder = _current_owner(store, run_id)
        if readable and holder != owner:
            return LeaseLost(
                f"run {run_id} was taken over by {_who(holder)} while this process was paused (no heartbeat "
                f"for over {lease_ttl_s:g}s); this process stopped at once and sent nothing more, and {kept}")
        return RunAborted(f"run {run_id} was extended by another writer; this process stopped at once and "
                          f"sent nothing more, and {kept}: {scrub(str(cause))}")
    return RunAborted(scrub(
        f"cannot write to the store {store.url}: {_reason(cause)}; the run stopped at once and sent "
        f"nothing more, and {kept}. Run `generate --resume` once the store can be written again"))


def start_error(store: EventStore, exc: BaseException) -> RunAborted:
    """A run could not even start (or take its lease) because the store refused a write."""
    reason = _reason(exc).splitlines()[0]
    if "locked" in reason or "busy" in reason:
        return RunAborted(scrub(f"the store {store.url} is busy ({reason}): another process holds a write lock "
                                "on it; try again once that process has finished or stopped"))
    return RunAborted(scrub(f"cannot write to the store {store.url}: {reason}; nothing was changed. Try again once "
                            "the store can be written (a read-only folder, a full disk?)"))


def _reason(cause: BaseException) -> str:
    orig = getattr(cause, "orig", None) or getattr(cause.__cause__, "orig", None)
    return str(orig) if orig is not None else str(cause)
