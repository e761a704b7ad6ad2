"""Read JSON Lines files of objects, with errors that name the file and line.

Seed files, held-out sets and exported datasets are all hand-edited JSONL at some point; one
reader means one set of messages a user learns to read ("file, line N: what is wrong").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import orjson

from ..errors import JsonlError

__all__ = ["JsonlError", "read_jsonl"]


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a UTF-8 byte-order mark is accepted."""
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            row = _flat_row(raw)
            if row is not None:
                yield number, row
                continue
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise JsonlError(f"{path}, line {number}: not UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                # Some of the parser's messages end in "at" already ("Invalid control character at").
                where = f"column {exc.colno}" if exc.msg.endswith(" at") else f"at column {exc.colno}"
                raise JsonlError(f"{path}, line {number}: bad JSON ({exc.msg} {where})") from None
            if not isinstance(row, dict):
                raise JsonlError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


_EXACT = (str, int, bool, type(None))


def _flat_row(raw: bytes) -> dict[str, Any] | None:
    """The common line (an object of strings and numbers) at a third of the `json` path's cost, or
    None for the exact path to read it. Only where both parsers agree: orjson reads an integer past
    64 bits as a float, so a row holding any float (or anything nested) goes the exact way."""
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(row) is not dict:
        return None
    for value in row.values():
        if type(value) not in _EXACT:
            return None
    return row
