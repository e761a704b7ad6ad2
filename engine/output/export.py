"""Dataset writers: plain JSONL, chat-format JSONL, and a Hugging Face dataset folder.

Every writer builds its output under a temporary name next to the target and renames it into
place only when complete, so an error (bad row, full disk, interrupted export) never leaves a
half-written dataset where a training job would pick it up.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import ExportError

FORMATS = ("jsonl", "chat", "hf")
COLUMNS = (
    "question", "answer", "strategy", "seed_id", "role", "model", "query_ids", "verification", "sample_id", "run_id",
)
# Provenance a run's rows carry beyond COLUMNS (rows from elsewhere may lack it): the answer's
# finish reason, "length" when the teacher was cut off at max_tokens ([quality] keep_truncated).
EXTRA_COLUMNS = ("finish_reason",)


def _checked(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str):
                raise ExportError(f"row {i} (sample {row.get('sample_id')!r}): {key!r} must be a string")
        yield {**{c: None for c in COLUMNS}, **row}


def chat_record(row: dict[str, Any]) -> dict[str, Any]:
    """The messages layout OpenAI fine-tuning and TRL's SFTTrainer read; provenance under metadata."""
    return {
        "messages": [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ],
        "metadata": {k: v for k, v in row.items() if k not in ("question", "answer")},
    }


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


def _write_lines(records: Iterable[dict[str, Any]], out: Path) -> int:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(_dumps(record) + "\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _hf_row(row: dict[str, Any]) -> dict[str, Any]:
    # Arrow needs one type per column; verification details differ between verifiers, so the
    # verification dict travels as JSON text (json.loads gives it back).
    return {**row, "verification": None if row["verification"] is None else _dumps(row["verification"]),
            "query_ids": [str(q) for q in row["query_ids"] or []]}


def _write_hf(rows: Iterable[dict[str, Any]], out: Path) -> int:
    import datasets  # only this format needs it

    records = [_hf_row(r) for r in rows]
    if records:
        table = datasets.Dataset.from_list(records)
    else:
        table = datasets.Dataset.from_dict({c: [] for c in (*COLUMNS, *EXTRA_COLUMNS)})
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        table.save_to_disk(str(tmp))
        if out.exists():
            os.replace(out, old)  # a directory cannot be replaced in one rename; keep it until the new one is in
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return len(records)


def write_rows(rows: Iterable[dict[str, Any]], fmt: str, out: Path) -> int:
    """Write `rows` (dicts with COLUMNS) to `out` in `fmt`; returns the number of rows written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        if out.exists() and not out.is_dir():
            raise ExportError(f"{out}: exists and is not a folder (the hf format writes a folder)")
        return _write_hf(_checked(rows), out)
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; the {fmt} format writes a file")
    records = _checked(rows)
    return _write_lines(records if fmt == "jsonl" else map(chat_record, records), out)
