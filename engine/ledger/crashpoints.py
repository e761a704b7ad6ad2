"""A test hook that ends the process right after its N-th durable commit.

"Resume loses nothing settled and pays nothing twice, from a kill at any instant" is only proven by
killing a run at every instant that matters: each point where the store changed. With
SYNTHLEDGER_EXIT_AFTER_COMMITS=N the process leaves through `os._exit` (no cleanup, no final
event: what a SIGKILL leaves) immediately after the N-th commit of the event writer, so a test can
walk N over a whole run and `--resume` after each. Unset (the normal case) it costs two dict lookups
per commit.

SYNTHLEDGER_SIGNAL_AFTER_COMMITS=N:INT (or N:TERM) sends the process that signal right after the
N-th commit instead: a Ctrl-C landing at an exact instant (the first commit, before the event loop
listens), which no timing-based test hits reliably.
"""

from __future__ import annotations

import os
import signal

ENV = "SYNTHLEDGER_EXIT_AFTER_COMMITS"
SIGNAL_ENV = "SYNTHLEDGER_SIGNAL_AFTER_COMMITS"
EXIT_CODE = 86  # distinctive: a test tells "the hook fired" from any real exit

_count = 0


def committed() -> None:
    """Call after each durable commit of a run's events."""
    global _count
    limit, signal_at = os.environ.get(ENV), os.environ.get(SIGNAL_ENV)
    if not limit and not signal_at:
        return
    _count += 1
    if limit and _count >= _number(ENV, limit):
        os._exit(EXIT_CODE)
    if signal_at:
        at, _, name = signal_at.partition(":")
        if _count == _number(SIGNAL_ENV, at):
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def _number(var: str, text: str) -> float:
    """A testing hook's count; a bad one is said once and ignored (it failed the writer, and so the
    run, which was left `running`, with "invalid literal for int()" naming no variable)."""
    try:
        return int(text)
    except ValueError:
        if var not in _warned:
            _warned.add(var)
            os.write(2, f"warning: {var}={text!r} is not a whole number; ignored\n".encode())
        return float("inf")


_warned: set[str] = set()
