"""A test hook that ends the process right after its N-th durable commit.

"Resume loses nothing settled and pays nothing twice, from a kill at any instant" is only proven by
killing a run at every instant that matters: each point where the store changed. With
SYNTHLEDGER_EXIT_AFTER_COMMITS=N the process leaves through `os._exit` (no cleanup, no final
event: what a SIGKILL leaves) immediately after the N-th commit of the event writer, so a test can
walk N over a whole run and `--resume` after each. Unset (the normal case) it costs one dict lookup
per commit.
"""

from __future__ import annotations

import os

ENV = "SYNTHLEDGER_EXIT_AFTER_COMMITS"
EXIT_CODE = 86  # distinctive: a test tells "the hook fired" from any real exit

_count = 0


def committed() -> None:
    """Call after each durable commit of a run's events."""
    global _count
    limit = os.environ.get(ENV)
    if not limit:
        return
    _count += 1
    if _count >= int(limit):
        os._exit(EXIT_CODE)
