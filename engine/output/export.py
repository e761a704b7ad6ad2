"""Dataset writers: plain JSONL, chat-format JSONL, OpenAI fine-tuning JSONL, and a Hugging Face
dataset folder.

Every writer builds its output under a temporary name next to the target and renames it into
place only when complete, so an error (bad row, full disk, interrupted export) never leaves a
half-written dataset where a training job would pick it up. What lands there has the permissions
the user's umask asks for (temporary files are created private, then opened up on the way in).

- `jsonl`: the rows as they are, with provenance.
- `chat`: `{"messages": [...], "metadata": {provenance}}` (TRL and most chat trainers).
- `openai`: exactly `{"messages": [...]}` with roles system/user/assistant: OpenAI's fine-tuning
  upload validator refuses any other top-level key.
- `hf`: a `save_to_disk` folder with question/answer/provenance columns *and* `messages`, the
  conversational column TRL's SFTTrainer reads as is, plus a dataset card (README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from ...store.folders import make_parent
from ..errors import ExportError

FORMATS = ("jsonl", "chat", "openai", "hf")
COLUMNS = (
    "question", "answer", "strategy", "seed_id", "role", "model", "query_ids", "verification", "sample_id", "run_id",
)
# Provenance a run's rows carry beyond COLUMNS (rows from elsewhere may lack it): the answer's
# finish reason, "length" when the teacher was cut off at max_tokens ([quality] keep_truncated),
# and the seeds the sample was made from (a new question's examples).
EXTRA_COLUMNS = ("finish_reason", "source_seed_ids")
LIST_COLUMNS = ("query_ids", "source_seed_ids")


def _checked(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str):
                raise ExportError(f"row {i} (sample {row.get('sample_id')!r}): {key!r} must be a string")
        yield {**{c: None for c in COLUMNS}, **row}


def messages_of(row: dict[str, Any], system: str | None = None) -> list[dict[str, str]]:
    """The conversation a sample teaches: an optional system prompt, the question, the answer."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]


def chat_record(row: dict[str, Any], system: str | None = None) -> dict[str, Any]:
    """The messages layout TRL's SFTTrainer reads; provenance under metadata."""
    return {
        "messages": messages_of(row, system),
        "metadata": {k: v for k, v in row.items() if k not in ("question", "answer")},
    }


def openai_record(row: dict[str, Any], system: str | None = None) -> dict[str, Any]:
    """Exactly what OpenAI's fine-tuning upload accepts: one `messages` key, nothing else."""
    return {"messages": messages_of(row, system)}


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _open_up(path: Path) -> None:
    """Give a finished export the permissions a plain `open()`/`mkdir` would have had under the
    user's umask: mkstemp/mkdtemp create them 0600/0700, which a training job run as another user
    (or a shared data folder) cannot read."""
    mask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for child in path.rglob("*"):
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


def _write_lines(records: Iterable[dict[str, Any]], out: Path) -> int:
    if out.exists() and not out.is_file():  # /dev/stdout, a FIFO: written through, not renamed over
        return _write_through(records, out)
    if out.is_symlink():  # the link stays; the file it names gets the export
        out = Path(os.path.realpath(out))
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(_dumps(record) + "\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        _open_up(Path(tmp))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _write_through(records: Iterable[dict[str, Any]], out: Path) -> int:
    """A target that is not a regular file (a device, a FIFO, /dev/stdout) is written in place:
    a temporary file renamed over it replaced the device node itself (as root, /dev/stdout became
    a file for every process), and a FIFO's reader got nothing."""
    count = 0
    with open(out, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(_dumps(record) + "\n")
            count += 1
    return count


def _hf_row(row: dict[str, Any], system: str | None = None) -> dict[str, Any]:
    # Arrow needs one type per column; verification details differ between verifiers, so the
    # verification dict travels as JSON text (json.loads gives it back).
    return {"messages": messages_of(row, system), **row,
            "verification": None if row["verification"] is None else _dumps(row["verification"]),
            "query_ids": [str(q) for q in row["query_ids"] or []]}


def hf_dataset(rows: Iterable[dict[str, Any]], system: str | None = None) -> Any:
    """The rows as a `datasets.Dataset` (the `hf` format's columns, `messages` first)."""
    import datasets  # only this format needs it

    datasets.disable_progress_bars()  # an export says one line ("wrote N rows"), not a bar per shard
    records = [_hf_row(r, system) for r in _checked(rows)]
    if records:
        return datasets.Dataset.from_list(records)
    message = datasets.Features({"role": datasets.Value("string"), "content": datasets.Value("string")})
    features = datasets.Features({"messages": datasets.List(message),
                                  **{c: datasets.Value("string") for c in (*COLUMNS, *EXTRA_COLUMNS)
                                     if c not in LIST_COLUMNS},
                                  **{c: datasets.List(datasets.Value("string")) for c in LIST_COLUMNS}})
    return datasets.Dataset.from_dict({c: [] for c in features}, features=features)


def _write_hf(rows: Iterable[dict[str, Any]], out: Path, system: str | None, card: str | None) -> int:
    table = hf_dataset(rows, system)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        # No rows is no shard by default, and a folder without one fails load_from_disk (IndexError).
        table.save_to_disk(str(tmp), **({} if len(table) else {"num_shards": 1}))
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        _open_up(tmp)
        if out.exists():
            os.replace(out, old)  # a directory cannot be replaced in one rename; keep it until the new one is in
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return len(table)


def write_rows(rows: Iterable[dict[str, Any]], fmt: str, out: Path, *, system: str | None = None,
               card: str | None = None) -> int:
    """Write `rows` (dicts with COLUMNS) to `out` in `fmt`; returns the number of rows written.

    `system` prepends a system message to every conversation; `card` is the dataset card the `hf`
    folder carries as README.md."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    out = Path(out)
    try:
        _make_parent(out)
        if fmt == "hf":
            _check_replaceable(out)
            return _write_hf(rows, out, system, card)
        if out.is_dir():
            raise ExportError(f"{out}: is a folder; the {fmt} format writes a file")
        _check_overwritable(out)
        records = _checked(rows)
        if fmt == "jsonl":
            return _write_lines(records, out)
        make = chat_record if fmt == "chat" else openai_record
        return _write_lines((make(r, system) for r in records), out)
    except OSError as exc:
        # About the path the user gave, never the temporary name the writer was using.
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None


# What `Dataset.save_to_disk` leaves in a folder: the mark of an earlier export, safe to replace.
SAVED_DATASET_FILES = ("dataset_info.json", "state.json")


def _check_replaceable(out: Path) -> None:
    """The hf format replaces its folder whole, so `--out .` or a typo naming a project folder
    would delete the user's files: only an empty folder or an earlier dataset export is replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder (the hf format writes a folder)")
    if any(out.iterdir()) and not all((out / name).is_file() for name in SAVED_DATASET_FILES):
        raise ExportError(f"{out}: is a folder that holds other files, not an earlier dataset export; "
                          "the hf format replaces its folder whole, so give a new or empty one")


def _check_overwritable(out: Path) -> None:
    """A file format replaces its file, so `--out` naming the store, a config or a seed file by
    mistake would lose it: only an empty file or an earlier export (a first line that is a JSON
    object with `messages`, or with a sample's `sample_id`) is written over."""
    if not out.is_file() or out.stat().st_size == 0:
        return
    with open(out, "rb") as fh:
        head = fh.read(1 << 20)
    if head.startswith(b"SQLite format 3\x00"):
        raise ExportError(f"{out}: is a SQLite database (a store?), not an earlier export; give a new path")
    try:
        first = json.loads(head.split(b"\n", 1)[0])
    except ValueError:
        first = None
    if not (isinstance(first, dict) and ("messages" in first or "sample_id" in first)):
        raise ExportError(f"{out}: exists and is not an earlier export (its first line is not an exported row); "
                          "give a new path, or remove the file first")


def _make_parent(out: Path) -> None:
    """The folder `out` goes in, created if missing; an error names the path the user gave."""
    reason = make_parent(out)
    if reason is not None:
        raise ExportError(f"cannot write {out}: {reason}")
