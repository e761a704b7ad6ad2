"""What a run says when a plugin's own code fails: one line naming the plugin (or the item it was
working on) and the line of code that raised, instead of a traceback through the engine's task
groups. A plugin author needs the place; a user needs to know it was not their config."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import PluginFailed, SynthledgerError

T = TypeVar("T")


def where(exc: BaseException) -> str:
    """`file.py:12 in run`: the innermost frame of the traceback, where the exception was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown place"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


def failure(what: str, exc: BaseException) -> str:
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{what} raised {type(exc).__name__} at {where(exc)}: {message}"


def guarded(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, with anything but synthledger's own errors (a plugin may raise a
    ConfigError on purpose) turned into a PluginFailed that says `what` failed, and where."""
    try:
        return fn(*args, **kwargs)
    except SynthledgerError:
        raise
    except Exception as exc:
        raise PluginFailed(failure(what, exc)) from exc


_END = object()


def guarded_iter(what: str, items: Iterable[T]) -> Iterator[T]:
    """Iterate a plugin's generator (a strategy's plan), each step `guarded`."""
    it = guarded(what, iter, items)
    while (item := guarded(what, next, it, _END)) is not _END:
        yield item  # type: ignore[misc]


class GuardedCalls:
    """A plugin object every method of which is `guarded` as "task 'x' (plugin ...) extract()": a
    third-party task is called from inside other plugins (a verifier's check, a strategy's parse),
    and its failures were told as theirs (QA: a task's `equivalent()` raising was "item ... of
    strategy 'answer_augmentation' raised", and its `extract()` raising at a run's start a traceback).
    Built-in tasks are not wrapped: their calls are on every sample's path."""

    def __init__(self, inner: Any, who: str) -> None:
        self._inner, self._who = inner, who

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("_") or not callable(value):
            return value
        what = f"{self._who} {name}()"

        def call(*args: Any, **kwargs: Any) -> Any:
            return guarded(what, value, *args, **kwargs)
        return call
