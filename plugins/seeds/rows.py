"""Turning raw rows (dicts) into validated seeds, shared by every file-based source.

All file formats fail the same way: a `SeedError` that names the file and the 1-based line (or
row) and says what is wrong, so the user can fix the data without guessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import field_validator

from synthledger.engine.api import PluginOptions, Seed, SeedError


class FieldOptions(PluginOptions):
    """Which fields of a row hold the question, the answer (None: the seeds have no answers) and
    the id (None: the line or row number)."""

    path: str
    question_field: str = "question"
    answer_field: str | None = "answer"
    id_field: str | None = None

    @field_validator("path", "question_field")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("answer_field", "id_field")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        """TOML has no null: `answer_field = ""` is how a config file says the seeds have no answers."""
        return None if value is not None and not value.strip() else value


def resolve(path: str, base_dir: str) -> Path:
    """Relative paths are relative to the config file's folder, not the working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def seed_file(path: str, base_dir: str) -> Path:
    """The seed file a source reads, which must be one (a folder was reported as "not found")."""
    p = resolve(path, base_dir)
    if p.is_dir():
        raise SeedError(f"{p}: a folder, not a seed file; name the file in it")
    if not p.is_file():
        raise SeedError(f"{p}: not a regular file (a device or a pipe), not a seed file" if p.exists()
                        else f"{p}: seed file not found")
    return p


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _not_text(value: str) -> str | None:
    """Why `value` cannot be stored or sent, if it cannot: a lone surrogate (JSON's `"\\ud800"`
    escape) is no character, and UTF-8 cannot encode it (QA: a run crashed with a traceback)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds {value[exc.start]!r} at character {exc.start + 1}, a lone surrogate, which is not text"
    return None


def _check_text(at: str, fields: dict[str, str | None]) -> None:
    for name, value in fields.items():
        problem = _not_text(value) if value is not None else None
        if problem is not None:
            raise SeedError(f"{at}: field {name!r} {problem}")


def build_seeds(
    rows: Iterable[tuple[int, dict[str, Any]]],
    options: FieldOptions,
    where: str,
    unit: str = "line",
) -> list[Seed]:
    """Validate `(number, row)` pairs into seeds; `where` and `unit` name the place in errors."""
    seeds: list[Seed] = []
    seen: dict[str, int] = {}
    answers_found = False
    for number, row in rows:
        at = f"{where}, {unit} {number}"
        if options.question_field not in row:
            fields = ", ".join(sorted(map(str, row))) or "none"
            raise SeedError(f"{at}: missing field {options.question_field!r} (fields: {fields})")
        question = row[options.question_field]
        if not isinstance(question, str):
            raise SeedError(
                f"{at}: field {options.question_field!r} must be a string, got {type(question).__name__}"
            )
        if not question.strip():
            raise SeedError(f"{at}: field {options.question_field!r} is empty")
        answer = None
        if options.answer_field is not None and row.get(options.answer_field) is not None:
            raw = row[options.answer_field]
            answer = _scalar_text(raw)
            if answer is None:
                raise SeedError(
                    f"{at}: field {options.answer_field!r} must be a string or number, "
                    f"got {type(raw).__name__}"
                )
            answer = answer.strip() or None
            answers_found = True
        if options.id_field is None:
            seed_id = str(number)
        else:
            if row.get(options.id_field) is None:
                raise SeedError(f"{at}: missing field {options.id_field!r} (the id_field)")
            seed_id = _scalar_text(row[options.id_field])
            if seed_id is None or not seed_id.strip():
                raise SeedError(f"{at}: field {options.id_field!r} must be a non-empty string or number")
            seed_id = seed_id.strip()
        _check_text(at, {options.question_field: question, options.answer_field or "answer": answer,
                         options.id_field or "id": seed_id})
        if seed_id in seen:
            raise SeedError(f"{at}: duplicate id {seed_id!r} (first seen at {unit} {seen[seed_id]})")
        seen[seed_id] = number
        seeds.append(Seed(id=seed_id, question=question.strip(), answer=answer, meta={}))  # (a default is deep-copied)
    if not seeds:
        raise SeedError(f"{where}: contains no seeds (empty)")
    if (
        options.answer_field is not None
        and "answer_field" in options.model_fields_set
        and not answers_found
    ):
        # An explicitly named answer field that no row has is a typo, not "seeds without answers".
        raise SeedError(
            f"{where}: answer_field {options.answer_field!r} is not present in any row "
            "(set answer_field = \"\" if the seeds have no answers)"
        )
    return seeds


def numbered(rows: Iterable[dict[str, Any]], start: int = 1) -> Iterator[tuple[int, dict[str, Any]]]:
    return ((i, row) for i, row in enumerate(rows, start))
