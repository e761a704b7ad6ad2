"""The garbage collector, set for the length of a run.

A run allocates and frees a few hundred small objects per query (events, payloads, coroutines,
futures). With CPython's default first-generation threshold of 700, a zero-latency run of 10,000
queries triggered about a thousand collections, and each full one walked the ~90,000 objects that
start-up leaves behind for good (modules, classes, the seed set): together about a tenth of the
run's CPU time (benchmarks/throughput.py, scenario c). For the length of a run those long-lived
objects are frozen (never walked again) and young objects are collected every 20,000 net
allocations instead of every 700. Cycles are still collected, so memory stays flat (the same
benchmark checks peak RSS from 2k to 50k queries). The previous settings come back when the
outermost run ends, so a notebook or a test that runs generation in-process is left as it was; a
process that froze its own objects (a server that calls gc.freeze() after start-up) keeps that
freeze, untouched.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

RUN_THRESHOLD = 20_000

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None
_froze = False  # whether we froze (a process that froze objects itself keeps its own freeze)


@contextmanager
def tuned_for_a_run() -> Iterator[None]:
    global _depth, _saved, _froze
    with _lock:
        _depth += 1
        if _depth == 1:
            _saved = gc.get_threshold()
            _froze = gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
            gc.set_threshold(max(RUN_THRESHOLD, _saved[0]), *_saved[1:])
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                if _froze:
                    gc.unfreeze()
                _saved, _froze = None, False
