"""Ctrl-C while a run's start waits for its store ends the process at once.

`generate` holds SIGINT/SIGTERM (blocked, so pending) from before its first write until its event
loop listens: landing in between, they failed the run with a false reason or killed it with the run
left `running` (launch.py). But that first write can wait: another process holding the SQLite
store's write lock makes it wait up to the busy timeout (10 s, or what SYNTHLEDGER_BUSY_TIMEOUT
says), inside SQLite's C code, and QA's Ctrl-C there did nothing until the wait ended.

So while the start is under way, a thread takes the held signals itself (`sigtimedwait`). One that
comes before the start has written anything ends the process with one line: nothing was recorded,
so there is nothing to stop cleanly (a transaction left open is rolled back, as after `kill -9`).
One that comes after is handed back to the main thread, pending as before, for the loop to take.
"""

from __future__ import annotations

import os
import signal
import threading
from types import TracebackType

WAIT_S = 0.05  # how long the thread waits for a signal at a time: also how late it notices the end


class StartWait:
    """`with StartWait(signals, where): <start the run>; wait.started()` - in the main thread, with
    `signals` blocked there (the thread inherits that mask, which `sigtimedwait` needs)."""

    def __init__(self, signals: set[int], where: str) -> None:
        self.signals = signals
        self.where = where
        self._started = False
        self._done = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "StartWait":
        if hasattr(signal, "sigtimedwait") and threading.current_thread() is threading.main_thread():
            self._thread = threading.Thread(target=self._watch, name="synthledger-start-wait", daemon=True)
            self._thread.start()
        return self

    def started(self) -> None:
        """The run's first write is done: a signal from now on is the loop's to take."""
        self._started = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._done = True  # (not joined: the thread ends within WAIT_S, handing back what it took)

    def _watch(self) -> None:
        main = threading.main_thread().ident
        while not self._done:
            got = signal.sigtimedwait(self.signals, WAIT_S)
            if got is None:
                continue
            if not self._started and not self._done:
                _end(got.si_signo, self.where)
            if main is not None:  # pending again, in the main thread, which still blocks it
                signal.pthread_kill(main, got.si_signo)
            return


def _end(signum: int, where: str) -> None:
    """One line on stderr (os.write: the main thread, blocked in C, may hold the stream's lock), then
    the shell's status for the signal."""
    name = signal.Signals(signum).name
    line = f"synthledger: {name} while the run's start waited for its store ({where}): nothing was recorded\n"
    try:
        os.write(2, line.encode(errors="replace"))
    except OSError:
        pass
    os._exit(128 + signum)
