"""Ctrl-C that a training or evaluation run, or the experiment driving them, cannot lose.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT is handled, and that can be
inside a finalizer (`__del__`). An exception raised there is "ignored" and printed, so the interrupt
is gone. Loading a model runs many finalizers (the `regex` module has one), and a Ctrl-C that landed
in one left training going as if nothing had been pressed (seen in CI: the run was still training a
minute later). While a run is guarded, a Ctrl-C is also remembered: a KeyboardInterrupt lost in a
finalizer is not printed, and it is raised again at the run's next event (a logging step, a batch
of predictions).

Opening and closing a run are held steps (`held()`): a Ctrl-C then is remembered and raised once
the step is over. One that landed while a run was being opened (its row and `run_started` written,
the journal not yet handed back) left the run `running` with nobody to close it: an experiment on
Ray cancels its jobs with a Ctrl-C, and the first moments of a job are when that comes (seen under
load: the run's process is a Ray worker that lives on, so no sweep closes it either).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Iterator

Record = Callable[[str, dict[str, Any]], Any]


class CtrlC:
    def __init__(self) -> None:
        self.pressed = False
        self._holding = False

    def check(self) -> None:
        """Raise the KeyboardInterrupt a Ctrl-C meant, if it was lost on its way."""
        if self.pressed:
            raise KeyboardInterrupt

    def guarding(self, record: Record) -> Record:
        """`record`, checking for a lost Ctrl-C first: a run's events are where it is raised again."""
        def guarded(type_: str, payload: dict[str, Any]) -> Any:
            self.check()
            return record(type_, payload)
        return guarded

    @contextmanager
    def held(self) -> Iterator[None]:
        """A step no Ctrl-C may cut in two: one pressed meanwhile is raised by the next `check()`."""
        holding, self._holding = self._holding, True
        try:
            yield
        finally:
            self._holding = holding

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The handler: SIGINT here, and the experiment driver's SIGTERM, which stops it the same way."""
        self.pressed = True
        if not self._holding:
            raise KeyboardInterrupt


@contextmanager
def guarded_ctrl_c() -> Iterator[CtrlC]:
    """Remember Ctrl-C while a run is going. Only where Ctrl-C raises KeyboardInterrupt (the main
    thread, Python's own handler): an experiment's worker ignores SIGINT, and that stays so."""
    ctrl_c = CtrlC()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield ctrl_c
        return
    previous_hook = sys.unraisablehook

    def unraisable(info: Any) -> None:
        if ctrl_c.pressed and isinstance(info.exc_value, KeyboardInterrupt):
            return  # raised again at the next event; not worth a traceback on the terminal
        previous_hook(info)

    signal.signal(signal.SIGINT, ctrl_c.on_signal)
    sys.unraisablehook = unraisable
    try:
        yield ctrl_c
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = previous_hook
