"""A stop signal always stops the process, even while synchronous code holds the event loop.

A run hears SIGINT/SIGTERM through its event loop (launch.py), which takes them only when it gets
control back: a plugin whose `run()` called `time.sleep(600)`, or spun, made Ctrl-C and `kill` do
nothing until it returned (QA: only `kill -9` stopped it). The loop's own handler is not replaced
but wrapped: the wrapper only notes the signal, then calls the loop's handler, so a loop that does
react takes the graceful path exactly as before. Python runs the wrapper between two bytecodes of
the main thread even while the loop is blocked (a `time.sleep` is woken by the signal, then sleeps
on), and a daemon thread watches the notes: a signal the loop has not taken within `after_s`, or
a further one while an earlier one is still untaken (or once a stop is under way), ends the
process at once, with one line saying why.

Ending hard is safe by design: the store's invariants let a kill at any instant lose nothing
settled, and a resume never pays again for what was settled (an answer still on its way is counted
as maybe billed, as after `kill -9`). Nothing is committed here: the blocked main thread may be in
the middle of a write, and a signal handler may interrupt anything.

The handler takes no lock and starts no thread (a handler interrupting the main thread inside
`threading`'s own locked code would deadlock there); the thread polls instead of being woken, a
few times a second: the deadline runs from the signal's own time, so polling only adds to it.
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
import threading
import time
from typing import Any, Callable

from .store_choice import StoreChoice, resume_phrase

# A loop that is not blocked takes a signal within milliseconds; this long untaken, it is blocked.
UNHEARD_S = 5.0
# A further signal while one is untaken (or after a stop was heard) ends the process this soon
# after the first untaken one: a double Ctrl-C on a healthy loop is still heard in time.
AGAIN_S = 1.0
POLL_S = 0.25
THREAD_NAME = "synthledger-stop-watchdog"


class StopWatchdog:
    """Ends the process hard when the event loop does not take a stop signal in time.

    `arm()` once the loop's signal handlers are in (main thread only), `heard()` from the loop each
    time it takes a signal, `disarm()` as the run ends: after that nothing here acts, the thread
    is gone and the loop's handlers are back, so a run that ended normally never exits from here."""

    def __init__(self, signals: set[int], hint: str, after_s: float = UNHEARD_S, again_s: float = AGAIN_S,
                 on_signal: Callable[[], None] | None = None) -> None:
        self.signals = signals
        self.hint = hint
        # Called as the signal comes, before the loop hears it: it may only set flags (it can interrupt
        # anything). The run stops sending there: the loop takes a signal only when it gets control
        # back, and after a short block the items that were ready sent requests first (QA).
        self.on_signal = on_signal
        self.after_s = after_s
        self.again_s = again_s
        self._unheard: list[tuple[int, float]] = []  # (signal, monotonic time) the loop has not taken yet
        self._stopping = 0  # the stop signal the loop took (0: none yet): a further untaken one means "now"
        self._tick = time.monotonic()  # when the loop last said it was running (`tick`)
        self._wrapped: dict[int, Any] = {}
        self._done = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        """Wrap the loop's handlers and start watching (nothing, once disarmed or off the main thread)."""
        if self._closed or threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            loops = signal.getsignal(sig)
            if callable(loops):  # (the loop's; SIG_DFL/SIG_IGN/None: no loop listens, nothing to watch)
                self._wrapped[sig] = loops
                signal.signal(sig, self._noted)
        if self._wrapped:
            self._thread = threading.Thread(target=self._watch, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def heard(self, signum: int) -> None:
        """The loop took a stop signal: it is not blocked, and the run is stopping."""
        self._stopping = signum
        self._unheard = []
        self._tick = time.monotonic()

    def tick(self) -> None:
        """Called by the loop every POLL_S or so: it is running. Once a stop is under way, a loop that
        stops ticking for `after_s` is blocked (a plugin's synchronous code during the grace), and
        the stop would wait for it for good (QA: alive 8 s on, until a second Ctrl-C)."""
        self._tick = time.monotonic()

    def disarm(self) -> None:
        """Stop watching and give the loop its own handlers back; safe to call more than once."""
        self._closed = True
        self._done.set()
        for sig, loops in self._wrapped.items():
            if signal.getsignal(sig) == self._noted:  # (the loop, leaving, may have put the default back)
                signal.signal(sig, loops)
        self._wrapped = {}
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * POLL_S + 1)
        self._thread = None

    def _noted(self, signum: int, frame: Any) -> None:
        """The signal handler: note the signal (a list append: no lock), then the loop's own handler."""
        self._unheard.append((signum, time.monotonic()))
        if self.on_signal is not None:
            self.on_signal()
        loops = self._wrapped.get(signum)
        if callable(loops):
            loops(signum, frame)

    def _watch(self) -> None:
        """The watching thread. It never takes a signal itself: delivered here, one would not wake a
        main thread sleeping in C code, and its Python handler would wait for the sleep to end."""
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, self.signals | _usr1())
        while not self._done.wait(POLL_S):
            unheard = self._unheard
            if not unheard:
                blocked = time.monotonic() - self._tick
                if self._stopping and blocked >= self.after_s and not self._done.is_set():
                    _stop_hard(self._stopping, blocked, False, self.hint, stopping=True)
                continue
            waited = time.monotonic() - unheard[0][1]
            again = len(unheard) > 1 or self._stopping
            if waited >= (self.again_s if again else self.after_s) and not self._done.is_set():
                _stop_hard(unheard[-1][0], waited, again, self.hint)


def _usr1() -> set[int]:
    return {signal.SIGUSR1} if hasattr(signal, "SIGUSR1") else set()


def _stop_hard(signum: int, waited: float, again: bool, hint: str, stopping: bool = False) -> None:
    """One line on stderr, then exit with the shell's status for the signal (130, 143).

    Written with os.write, not through sys.stderr: the blocked main thread may hold the stream's
    lock. Nothing is flushed or committed, and no exit handler runs (each could wait on that lock,
    or on the blocked loop). `stopping`: the loop took the signal, then blocked during the stop."""
    name = signal.Signals(signum).name
    which = f"a further {name}" if again else name
    line = (f"synthledger: stopped hard on {which}: the event loop was blocked for {waited:.0f}s "
            f"({_blocked_at()}: a plugin running synchronous code?) and could not stop the run cleanly; "
            f"everything settled is kept: {hint}\n")
    if stopping:
        line = (f"synthledger: stopped hard after {name}: the run was stopping, but its event loop has been "
                f"blocked for {waited:.0f}s ({_blocked_at()}: a plugin running synchronous code?); everything "
                f"settled is kept: {hint}\n")
    # On a terminal: show the cursor the live progress view hid, and start below that view.
    try:
        os.write(2, (("\x1b[?25h\n" if _tty(2) else "") + line).encode(errors="replace"))
    except OSError:
        pass
    os._exit(128 + signum)


def _tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _blocked_at() -> str:
    """Where the main thread is: its innermost frame outside the standard library (a plugin's
    `time.sleep` is C code: the innermost Python frame is the plugin's own)."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    innermost = frame
    while frame is not None and _in_stdlib(frame.f_code.co_filename):
        frame = frame.f_back
    frame = frame or innermost
    if frame is None:
        return "where, unknown"
    return f"in {os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}, {frame.f_code.co_name}()"


def _in_stdlib(filename: str) -> bool:
    paths = sysconfig.get_paths()
    if any(filename.startswith(paths[key]) for key in ("purelib", "platlib") if paths.get(key)):
        return False  # (a system Python's site-packages lies inside its standard library's folder)
    return bool(paths.get("stdlib")) and filename.startswith(paths["stdlib"])


def resume_hint(choice: StoreChoice | None) -> str:
    """How to go on, as the run's own "interrupted" message says it (`resume_phrase`), with the
    program as the user typed it (`python cli.py` from a checkout). None: a command other than
    `generate` drove the run (an experiment's cell), which its own command continues."""
    if choice is None:
        return "the same command with --resume continues it"
    program = "python cli.py" if os.path.basename(sys.argv[0] if sys.argv else "") == "cli.py" else "synthledger"
    return resume_phrase(choice, program + " ")
