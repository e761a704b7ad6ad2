"""Near-duplicate control for generated questions, in pure Python.

Exact duplicates (after normalisation) are a dict lookup. Near duplicates use character n-gram
MinHash with LSH banding to find candidates, then the exact Jaccard similarity of the candidates
decides, so the LSH only affects speed, never what counts as a duplicate (beyond its tiny miss
rate at the threshold, kept below 1%).

The MinHash is the one-permutation variant (each shingle hashed once, into one of `num_perm`
bins, empty bins filled from their neighbour): a classic `num_perm` hash functions per shingle
would cost 64 hashes per character in Python, which is too slow for 100k questions.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib

_WS = re.compile(r"\s+")
_EMPTY = 0xFFFFFFFF
_MASK = 0xFFFFFFFF


class _Punctuation(dict):
    """str.translate's table for "drop punctuation", filled in as characters are met: building it
    for the whole Basic Multilingual Plane up front cost 80 ms of every run's start-up. Only that
    plane counts, as it always has, so a text normalises as it did in earlier runs."""

    def __missing__(self, cp: int) -> None | int:
        drop = cp <= 0xFFFF and unicodedata.category(chr(cp)).startswith("P")
        self[cp] = None if drop else cp
        return self[cp]


_PUNCTUATION = _Punctuation()


def normalise(text: str) -> str:
    """Lower-case, punctuation removed, whitespace collapsed: the form that is compared."""
    return _WS.sub(" ", text.casefold().translate(_PUNCTUATION)).strip()


def shingles(norm: str, n: int) -> set[bytes]:
    """Character n-grams, as fixed-width UTF-32 byte strings (hashable by zlib without a per-gram
    encode, which would dominate the cost)."""
    data = norm.encode("utf-32-le")
    if len(norm) <= n:
        return {data} if norm else set()
    width = 4 * n
    return {data[i : i + width] for i in range(0, len(data) - width + 4, 4)}


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _recall(p: float, bands: int, min_hits: int) -> float:
    """P(at least `min_hits` of `bands` bands collide) when each collides with probability p."""
    miss = sum(math.comb(bands, k) * p**k * (1 - p) ** (bands - k) for k in range(min_hits))
    return 1.0 - miss


def choose_banding(num_perm: int, threshold: float, target: float = 0.99) -> tuple[int, int, int]:
    """(bands, rows, min_hits): the most selective banding that still finds a pair at `threshold`
    with probability >= `target` (fewer needless exact comparisons below the threshold)."""
    for rows in sorted((r for r in range(1, num_perm + 1) if num_perm % r == 0), reverse=True):
        bands = num_perm // rows
        for min_hits in (2, 1):
            if min_hits <= bands and _recall(threshold**rows, bands, min_hits) >= target:
                return bands, rows, min_hits
    return num_perm, 1, 1


class NearDuplicateIndex:
    """Questions seen so far, answering "is this one new?" in time independent of their number."""

    def __init__(self, threshold: float = 0.8, ngram: int = 5, num_perm: int = 64, seed: int = 0) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if ngram < 1 or num_perm < 1:
            raise ValueError("ngram and num_perm must be >= 1")
        self.threshold = threshold
        self.ngram = ngram
        self.num_perm = num_perm
        self._start = zlib.crc32(f"synthledger-dedupe:{seed}".encode())
        self.bands, self.rows, self.min_hits = choose_banding(num_perm, threshold)
        self._texts: list[str] = []
        self._refs: list[str] = []
        self._exact: dict[str, int] = {}
        self._buckets: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]

    def __len__(self) -> int:
        return len(self._texts)

    def _signature(self, sh: set[bytes]) -> list[int]:
        k = self.num_perm
        start = self._start
        crc32 = zlib.crc32
        sig = [_EMPTY] * k
        for s in sh:
            # A 32-bit hash, scrambled so its low bits (the bin) and high bits (the value) are
            # not the linear functions of the input CRC alone would give.
            h = (crc32(s, start) * 0x9E3779B1) & _MASK
            h ^= h >> 15
            b = h % k
            v = h // k
            if v < sig[b]:
                sig[b] = v
        # Densify: an empty bin borrows from the next filled one, offset by the distance so that
        # borrowed values differ between bins.
        filled = [i for i in range(k) if sig[i] != _EMPTY]
        if filled and len(filled) < k:
            nxt = filled[0] + k
            for i in range(k - 1, -1, -1):
                if sig[i] != _EMPTY:
                    nxt = i
                else:
                    j = nxt % k
                    sig[i] = (sig[j] + (nxt - i) * 0x61C88647) & _MASK
        return sig

    def _band_keys(self, sh: set[bytes]) -> list[int]:
        sig = self._signature(sh)
        r = self.rows
        return [hash(tuple(sig[b * r : (b + 1) * r])) for b in range(self.bands)]

    def check(self, text: str) -> str | None:
        """None when `text` is new, else why not ("exact duplicate of <ref>" or
        "near duplicate (jaccard 0.91) of <ref>"). Does not add it."""
        return self._check(normalise(text))[0]

    def add(self, text: str, ref: str) -> None:
        """Remember `text` under `ref` (free text used in reasons, e.g. "seed s12" or "q-000031")."""
        norm = normalise(text)
        if norm and norm not in self._exact:
            self._add(norm, ref, self._band_keys(shingles(norm, self.ngram)))

    def check_and_add(self, text: str, ref: str) -> str | None:
        """The usual pairing, hashing once: the reason if `text` is a duplicate, else remember it."""
        norm = normalise(text)
        reason, keys = self._check(norm)
        if reason is None and keys is not None:
            self._add(norm, ref, keys)
        return reason

    def _check(self, norm: str) -> tuple[str | None, list[int] | None]:
        if not norm:
            return "empty after normalisation", None
        found = self._exact.get(norm)
        if found is not None:
            return f"exact duplicate of {self._refs[found]}", None
        sh = shingles(norm, self.ngram)
        keys = self._band_keys(sh)
        hits: dict[int, int] = {}
        for bucket, key in zip(self._buckets, keys):
            entry = bucket.get(key)
            if entry is None:
                continue
            for idx in (entry,) if isinstance(entry, int) else entry:
                hits[idx] = hits.get(idx, 0) + 1
        # Most band collisions first: the likeliest duplicate is confirmed first.
        for idx, count in sorted(hits.items(), key=lambda kv: (-kv[1], kv[0])):
            if count < self.min_hits:
                break
            sim = jaccard(sh, shingles(self._texts[idx], self.ngram))
            if sim >= self.threshold:
                return f"near duplicate (jaccard {sim:.2f}) of {self._refs[idx]}", keys
        return None, keys

    def _add(self, norm: str, ref: str, keys: list[int]) -> None:
        idx = len(self._texts)
        self._texts.append(norm)
        self._refs.append(ref)
        self._exact[norm] = idx
        for bucket, key in zip(self._buckets, keys):
            entry = bucket.get(key)
            if entry is None:
                bucket[key] = idx
            elif isinstance(entry, int):
                bucket[key] = [entry, idx]
            else:
                entry.append(idx)
