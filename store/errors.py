"""The store's exceptions. Every one carries a message already phrased for the user (the CLI
prints it as one line), naming the store by its URL without a password."""

from __future__ import annotations

from ..engine.errors import SynthledgerError


class StoreError(SynthledgerError, RuntimeError):
    """The store cannot be opened or read (bad URL, not a database, newer schema...)."""


class ConcurrencyError(StoreError):
    """Someone else extended this run since we last read it, or holds its lease."""


class RunMovedOn(ConcurrencyError):
    """The run's log grew past what the caller read before taking its lease (see EventStore.acquire)."""


class RunNotFound(StoreError):
    pass


class NameTaken(StoreError):
    """A run that must have a name of its own was started while another process created a run of
    that name: the second start is refused (the caller says which run has the name)."""


class StoreMissing(StoreError):
    """A read-only command was pointed at a store that does not exist (a mistyped path, usually)."""


class StoreBusy(StoreError):
    """Another connection held a lock on the store for longer than we were willing to wait."""


class DamagedEvent(StoreError, ValueError):
    """A stored event's payload cannot be decoded: the store was altered or damaged. A ValueError
    too, so the audit counts it as one more violation instead of stopping."""
