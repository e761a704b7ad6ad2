"""The hash chain: each event's hash covers its canonical form and the previous hash, so an
edited, reordered, inserted or deleted event breaks every hash after it."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

GENESIS = "0" * 64


def canonical(payload: Any) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def chain_hash(prev: str, seq: int, type_: str, schema_version: int, ts: float, payload_json: bytes) -> str:
    h = hashlib.sha256(prev.encode("ascii"))
    h.update(f"|{seq}|{type_}|{schema_version}|{ts!r}|".encode())
    h.update(payload_json)
    return h.hexdigest()
