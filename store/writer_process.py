"""A SQLite store's event commits, done by a process of their own.

Why: at full speed a generation run commits about 20,000 events a second. Done in a thread, every
commit held the interpreter lock for its Python work and took it back after each row SQLite
inserted, so the run's event loop (which does all the rest: requests, the ledger, the plugins) lost
about a fifth of its time to the writer and waited on commits that queued behind it. In a child
process the commit runs on another core; the loop hands it the batch, already serialised
(`NewEvent.raw`), and goes on with its work.

The loop talks to the child itself (`aappend`, the answer read when the pipe is readable): a thread
in between had to take the interpreter lock back twice per commit from a loop that seldom lets it
go, up to a switch interval (5 ms) each time. `on_answer` acts on a commit in the reader callback,
a loop iteration before the waiting task would.

The child (`writer_child`) opens the same store URL and runs the store's own `append` and
`heartbeat`, so the guards, the hash chain and the error messages are the store's. Its errors come back as the same
`StoreError` kinds, with the database's own reason kept (`abort` reads it). It runs in a session of
its own, so outside the run's process group: a Ctrl-C at the terminal is the run's to handle, and
the run's last events still need committing after it. It ends when its input closes: when the run
closes it, or when the run's process dies, after at most the commit it was doing (the append's
lease guard refuses anything a resume has since taken over).

A child that ends before it opens the store (it could not start) leaves the commits to this process,
on the store's own connections, as before the writer process existed.

`SYNTHLEDGER_EVENT_WRITER=thread` keeps commits in the run's own process (and a store that is not
a SQLite file always does)."""

from __future__ import annotations

import asyncio
import atexit
import os
import pickle
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, NoReturn

from .errors import ConcurrencyError, RunMovedOn, RunNotFound, StoreBusy, StoreError, StoreMissing
from .records import NewEvent
from .writer_child import HEADER, events_of

if TYPE_CHECKING:
    from .eventstore import EventStore

ENV_WRITER = "SYNTHLEDGER_EVENT_WRITER"
_KINDS = {c.__name__: c for c in (StoreError, ConcurrencyError, RunMovedOn, RunNotFound, StoreBusy, StoreMissing)}
_LIVE: "weakref.WeakSet[WriterProcess]" = weakref.WeakSet()

# Run as `python -c`: the package is loaded from where the parent's is (a checkout need not be installed).
_BOOT = """
import importlib.util, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
root, name = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location(name, root + "/__init__.py", submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
importlib.import_module(name + ".store.writer_child").serve()
"""


def wanted(store: EventStore) -> bool:
    """Whether `store`'s commits go to a child process: a SQLite file that can be written."""
    if os.environ.get(ENV_WRITER, "process").strip().lower() == "thread" or os.name != "posix" or not sys.executable:
        return False
    return store.sqlite_file is not None and not store.read_only


def _read_exact(fd: int, size: int) -> bytes:
    parts, left = [], size
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _widen(fd: int) -> None:
    """A pipe that holds a whole batch, so handing one over seldom waits for the child to read."""
    import fcntl  # (POSIX only, as this module's use is: see `wanted`)

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # (above the system's limit: the default size works, a little slower)


class _NeverStarted(Exception):
    """The child ended before it answered the store's opening."""


class WriterProcess:
    """`append` and `heartbeat` for a SQLite store, run by a child process; callable from any
    thread, one call at a time. The child starts at once and opens the store while the run gets
    ready; the first call waits for that."""

    def __init__(self, store: EventStore) -> None:
        self.where = store.where
        self._store = store
        self._lock = threading.Lock()
        self._local = False  # the child could not start: calls run here, on `store` (see `_here`)
        self._opened = False
        self._closed = False
        self._owed = 0  # answers to calls whose caller was cancelled before reading them
        package = __name__.split(".")[0]
        root = str(Path(__file__).resolve().parent.parent)
        self._proc = subprocess.Popen([sys.executable, "-c", _BOOT, root, package], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, bufsize=0)
        self._in, self._out = self._proc.stdin.fileno(), self._proc.stdout.fileno()  # type: ignore[union-attr]
        _widen(self._in)
        try:
            self._write(("open", store.url, store.busy_timeout_s))
        except OSError:
            pass  # (gone at once: the first call says so)
        _LIVE.add(self)

    def append(self, run_id: str, events: Iterable[NewEvent], expected_seq: int, prev_hash: str,
               *, owner: str | None = None, status: str | None = None) -> tuple[int, str]:
        return self._call("append", run_id, _rows(events), expected_seq, prev_hash, owner, status)

    def heartbeat(self, run_id: str, owner: str) -> None:
        self._call("heartbeat", run_id, owner)

    async def aappend(self, run_id: str, events: Iterable[NewEvent], expected_seq: int, prev_hash: str,
                      *, owner: str | None = None, status: str | None = None,
                      on_answer: Callable[[tuple[int, str]], None] | None = None) -> tuple[int, str]:
        """`append` from the event loop, which waits for the answer without a thread. `on_answer(result)`
        is called the moment a success is read, before this returns: whoever waits on the commit can be
        woken a loop iteration sooner (the loop runs every ready task between the two)."""
        request = ("append", run_id, _rows(events), expected_seq, prev_hash, owner, status)
        return await self._acall(*request, on_answer=on_answer)

    async def aheartbeat(self, run_id: str, owner: str) -> None:
        await self._acall("heartbeat", run_id, owner)

    def _call(self, *request: Any) -> Any:
        with self._lock:
            if not self._local:
                try:
                    self._ask(request)
                    return self._answer()
                except _NeverStarted:
                    self._local = True
            return self._here(request)

    def _here(self, request: tuple[Any, ...]) -> Any:
        """A call made in this process, on the store's own connections: the child ended before it
        opened the store (its interpreter could not import what this one did, say), and a run that
        can commit in a thread should not stop for want of a faster way."""
        op, run_id, *rest = request
        if op == "heartbeat":
            return self._store.heartbeat(run_id, *rest)
        rows, expected_seq, prev_hash, owner, status = rest
        return self._store.append(run_id, events_of(rows), expected_seq, prev_hash, owner=owner, status=status)

    async def _acall(self, *request: Any, on_answer: Callable[[Any], None] | None = None) -> Any:
        loop = asyncio.get_running_loop()
        if self._local or not self._lock.acquire(blocking=False):  # (another thread's call is out)
            return await self._in_a_thread(loop, request, on_answer)
        answer: asyncio.Future[Any] = loop.create_future()
        sent = False
        try:
            if not self._opened:
                opened = loop.create_future()
                loop.add_reader(self._out, lambda: opened.done() or opened.set_result(None))
                try:
                    await opened
                finally:
                    loop.remove_reader(self._out)
            try:
                self._ask(request)
            except _NeverStarted:
                self._local = True
            else:
                sent = True
                loop.add_reader(self._out, self._on_readable, loop, answer, on_answer)
                return await answer
        finally:
            loop.remove_reader(self._out)
            if sent and not (answer.done() and not answer.cancelled()):  # cancelled while the child works:
                self._owed += 1  # its answer is the next to read, and not the next call's
            self._lock.release()
        return await self._in_a_thread(loop, request, on_answer)  # (the child never started)

    async def _in_a_thread(self, loop: asyncio.AbstractEventLoop, request: tuple[Any, ...],
                           on_answer: Callable[[Any], None] | None) -> Any:
        result = await loop.run_in_executor(None, lambda: self._call(*request))
        if on_answer is not None:
            on_answer(result)
        return result

    def _on_readable(self, loop: asyncio.AbstractEventLoop, answer: "asyncio.Future[Any]",
                     on_answer: Callable[[Any], None] | None) -> None:
        loop.remove_reader(self._out)
        if answer.done():  # (cancelled: its caller counts the answer as owed)
            return
        try:
            result = self._answer()
        except BaseException as exc:
            answer.set_exception(exc)
            return
        if on_answer is not None:
            on_answer(result)
        answer.set_result(result)

    def _ask(self, request: tuple[Any, ...]) -> None:
        """Send `request` (after taking the answer to the store's opening, the first time)."""
        if self._closed:
            raise StoreError(f"store {self.where}: the event writer is closed")
        if not self._opened:
            self._answer(opening=True)
            self._opened = True
        try:
            self._write(request)
        except OSError:  # (a broken pipe: the child is gone)
            self._gone()

    def _write(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(HEADER.pack(len(data)) + data)
        while view:
            view = view[os.write(self._in, view):]

    def _answer(self, opening: bool = False) -> Any:
        """The child's answer (all of it is there, or on its way: the child writes it at once)."""
        while self._owed:
            self._owed -= 1
            self._frame()
        reply = pickle.loads(self._frame(opening))
        if reply[0] == "ok":
            return reply[1]
        _, kind, message, reason = reply
        cls = _KINDS.get(kind)
        exc = cls(message) if cls is not None else StoreError(f"store {self.where}: {kind}: {message}")
        if reason is not None:
            exc.orig = reason  # type: ignore[attr-defined]  # the database's own words (see engine/run/abort)
        raise exc

    def _frame(self, opening: bool = False) -> bytes:
        head = _read_exact(self._out, HEADER.size)
        data = _read_exact(self._out, HEADER.unpack(head)[0]) if len(head) == HEADER.size else b""
        if not data:
            if opening:
                raise _NeverStarted
            self._gone()
        return data

    def _gone(self) -> NoReturn:
        try:
            code = self._proc.wait(2)  # (its output just closed: it is exiting)
        except subprocess.TimeoutExpired:
            code = None
        how = "" if code is None else (f" (killed by signal {-code})" if code < 0 else f" (exit code {code})")
        raise StoreError(f"store {self.where}: the process committing its events ended unexpectedly{how}")

    def close(self) -> None:
        """Let the child finish and end (it has nothing queued: every call waits for its answer)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()  # type: ignore[union-attr]


@atexit.register
def _close_live() -> None:
    for writer in list(_LIVE):
        writer.close()


def _rows(events: Iterable[NewEvent]) -> list[tuple[Any, ...]]:
    return [(ev.type, ev.schema_version, ev.key, ev.raw if ev.raw is not None else ev.payload) for ev in events]
