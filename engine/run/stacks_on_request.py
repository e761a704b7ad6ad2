"""`kill -USR1` during a run: every thread's stack (faulthandler) and every task's (here).

Moved out of launch.py, which drives the run and its signals, to keep each module readable."""

from __future__ import annotations

import signal
from typing import Any

import anyio


class StacksOnRequest:
    """While a run lasts, `kill -USR1` (see cli.py) also prints every task's stack: a plugin waiting
    in an `await` is in no thread's stack, only in its task's (QA's `await asyncio.sleep(3600)` in a
    strategy showed as the event loop's select). Taken only where faulthandler held the signal (the
    CLI), and given back to it after: a program using the Python API keeps its own SIGUSR1.

    faulthandler keeps the signal, chained to the loop's handler: its thread dump comes at once even
    while a plugin's synchronous code holds the loop (QA: a `plan()` that spun printed nothing), and
    it holds the signal until the loop's handler is in (taken away before the serving task first
    ran, a USR1 killed the process, its default action)."""

    def __init__(self) -> None:
        self.taken = False

    async def serve(self) -> None:
        import faulthandler

        if not hasattr(signal, "SIGUSR1"):
            return
        usr1 = {signal.SIGUSR1}
        signal.pthread_sigmask(signal.SIG_BLOCK, usr1)  # (one arriving while the handlers change waits)
        try:
            self.taken = faulthandler.unregister(signal.SIGUSR1)
            if not self.taken:
                return
            with anyio.open_signal_receiver(signal.SIGUSR1) as requests:
                faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, usr1)
                async for _ in requests:
                    _print_tasks()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, usr1)

    def give_back(self) -> None:
        import faulthandler

        if self.taken:  # (the receiver, leaving, set the signal to its default under faulthandler)
            faulthandler.unregister(signal.SIGUSR1)
            faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)


def _print_tasks() -> None:
    """Every task's stack (faulthandler has printed every thread's)."""
    import asyncio
    import sys

    for task in asyncio.all_tasks():
        lines = [f'  File "{f.f_code.co_filename}", line {f.f_lineno}, in {f.f_code.co_name}'
                 for f in _awaiting(task.get_coro())]
        sys.stderr.write(f"Task {task.get_name()} (most recent call last):\n" + "\n".join(lines) + "\n")
    sys.stderr.flush()


def _awaiting(coro: Any) -> list[Any]:
    """The frames of a suspended task, down the chain of what each awaits (a task's own stack, as
    asyncio prints it, is its outermost coroutine alone: anyio's wrapper)."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames
