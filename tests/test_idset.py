"""The ledger's compact set of settled query hashes answers exactly as a Python set would."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from synthledger.engine.ledger.idset import IntSet

INT64 = st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(INT64, max_size=3000), st.lists(INT64, max_size=200))
def test_it_answers_as_a_set_does(added, probes):
    ours, theirs = IntSet(), set()
    for v in added:
        ours.add(v)
        theirs.add(v or 1)  # (0 is kept as 1: see IntSet)
    assert len(ours) == len(theirs)
    assert sorted(ours) == sorted(theirs)
    for v in [*added, *probes]:
        assert (v in ours) == ((v or 1) in theirs)


def test_many_query_hashes_through_several_growths_and_clustered_values():
    rng = random.Random(7)
    ids = [hash(f"q{rng.getrandbits(76):019x}") for _ in range(50_000)]
    clustered = list(range(1024, 1024 + 3000))  # same low bits run into each other's slots
    ours = IntSet()
    for v in ids + clustered:
        ours.add(v)
        ours.add(v)  # a second add changes nothing
    assert len(ours) == len(set(ids + clustered))
    assert all(v in ours for v in ids + clustered)
    assert not any(v in ours for v in range(-3000, 0))
    assert -1 not in ours and 2 ** 63 - 1 not in ours
