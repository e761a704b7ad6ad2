"""A set of 64-bit integers in 8 bytes a slot, for the ledger's settled query ids.

The ledger keeps `hash(query_id)` of every settled query for the whole run (a resume must know them
all). A Python set spends about 75 bytes on each (a 32-byte int object, its slot, the slack): 4 MB of
a 50,000-query run's memory, and most of its growth. This open-addressing table over an `array`
holds the same numbers in 16 bytes each at most (half full), for a few hundred nanoseconds more
per look-up, a handful of which a query makes.
"""

from __future__ import annotations

from array import array
from typing import Iterator

_EMPTY = 0
_START = 1024  # slots; a power of two


class IntSet:
    """`add`, `in`, `len` and iteration of 64-bit signed integers. 0 is stored as 1 (the table's
    empty mark), which equates the two: a clash as likely as two query ids sharing a hash."""

    __slots__ = ("_slots", "_mask", "_size")

    def __init__(self) -> None:
        self._slots = array("q", bytes(8 * _START))
        self._mask = _START - 1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, value: int) -> bool:
        value = value or 1
        return self._slots[self._slot(value)] == value

    def add(self, value: int) -> None:
        value = value or 1
        i = self._slot(value)
        if self._slots[i] != value:
            self._slots[i] = value
            self._size += 1
            if 2 * self._size > self._mask:
                self._grow()

    def _slot(self, value: int) -> int:
        """Where `value` is, or the empty slot where it would go (linear probing)."""
        slots, mask = self._slots, self._mask
        i = value & mask
        while True:
            found = slots[i]
            if found == value or found == _EMPTY:
                return i
            i = (i + 1) & mask

    def __iter__(self) -> Iterator[int]:
        return (v for v in self._slots if v != _EMPTY)

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("q", bytes(16 * len(old)))
        self._mask = 2 * len(old) - 1
        self._size = 0
        for value in old:
            if value != _EMPTY:
                self.add(value)
