"""A store another connection keeps locked: recognise it and say who holds it, where we can tell.

SQLite in WAL mode takes its writer lock as a POSIX lock on byte 120 of the `-shm` file (byte
0x40000001 of the database itself in rollback-journal mode); Linux lists such locks, with the
holder's pid, in /proc/locks. PostgreSQL names the sessions holding locks on our tables in
pg_locks/pg_stat_activity, and every synthledger session sets application_name to say whose it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import StoreBusy
from .urls import ENV_BUSY_TIMEOUT

SQLITE_WAL_WRITE_LOCK = 120
SQLITE_RESERVED_BYTE = 0x40000001
PG_LOCK_NOT_AVAILABLE = "55P03"


def is_busy(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) == PG_LOCK_NOT_AVAILABLE:
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database table is locked" in text or "database is busy" in text


def busy_error(where: str, waited_s: float, holders: list[str]) -> StoreBusy:
    held = f"held by {'; '.join(holders)}" if holders else "held by another connection"
    # --busy-timeout is an option of the program, not of a command: after the command it is refused.
    return StoreBusy(f"store {where} is busy: its write lock is {held}; gave up after {waited_s:g} s "
                     f"(wait for that to finish, or wait longer: {_program()} --busy-timeout SECONDS <command> ..., "
                     f"or {ENV_BUSY_TIMEOUT}=SECONDS)")


def _program() -> str:
    """How the user started us, as they would type it again: `python cli.py` from a checkout."""
    import sys

    return "python cli.py" if Path(sys.argv[0]).name == "cli.py" else "synthledger"


CMD_SHOWN = 120  # characters of a holder's command line a message shows


def _describe_pid(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    # One line: an argument may hold newlines (a `python -c` script) and runs of spaces.
    cmd = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    cmd = " ".join(cmd.split())
    if len(cmd) > CMD_SHOWN:
        cmd = cmd[:CMD_SHOWN - 1].rstrip() + "…"
    return f"pid {pid} ({cmd})" if cmd else f"pid {pid}"


def sqlite_holders(db_path: str) -> list[str]:
    """Processes holding the SQLite writer lock on `db_path` (Linux only; [] when unknown)."""
    wanted: set[tuple[str, int]] = set()
    for suffix, byte in (("-shm", SQLITE_WAL_WRITE_LOCK), ("", SQLITE_RESERVED_BYTE)):
        try:
            st = os.stat(db_path + suffix)
        except OSError:
            continue
        wanted.add((f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}", byte))
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids: list[int] = []
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 8 or parts[3] != "WRITE":
            continue
        try:
            pid, dev_ino, start = int(parts[4]), parts[5], int(parts[6])
            end = parts[7]
            last = int(end) if end != "EOF" else 1 << 62
        except ValueError:
            continue
        if any(dev_ino == d and start <= byte <= last for d, byte in wanted) and pid != os.getpid() and pid not in pids:
            pids.append(pid)
    return [_describe_pid(p) for p in pids]


def pg_holders(engine: Any) -> list[str]:
    """Other sessions holding locks on the store's tables, as `pid N (application, state)`."""
    from sqlalchemy import text

    q = text("SELECT DISTINCT a.pid, a.application_name, a.state, a.client_addr FROM pg_locks l "
             "JOIN pg_stat_activity a ON a.pid = l.pid "
             "WHERE l.granted AND l.pid <> pg_backend_pid() AND l.mode <> 'AccessShareLock' AND (l.locktype = 'advisory' OR "
             "l.relation IN ('runs'::regclass, 'events'::regclass)) ORDER BY a.pid")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '1s'")
            rows = conn.execute(q).all()
    except Exception:
        return []
    return [f"pid {pid} ({app or 'unnamed session'}, {state or '?'}{f', from {addr}' if addr else ''})"
            for pid, app, state, addr in rows]
