"""Seeds from a CSV file with a header row. Errors name the physical line where the row ends."""

from __future__ import annotations

import csv
from typing import Any, ClassVar, Iterator

from pydantic import field_validator

from synthledger.engine.api import Seed, SeedError, SeedSource

from .rows import FieldOptions, build_seeds, seed_file


class CsvSeedSource(SeedSource):
    name: ClassVar[str] = "csv"

    class Options(FieldOptions):
        delimiter: str = ","

        @field_validator("delimiter")
        @classmethod
        def _one_char(cls, value: str) -> str:
            if len(value) != 1:
                raise ValueError("must be a single character")
            return value

    options: Options

    def load(self) -> list[Seed]:
        path = seed_file(self.options.path, self.base_dir)
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                return build_seeds(self._rows(fh, str(path)), self.options, str(path))
        except UnicodeDecodeError as exc:
            raise SeedError(f"{path}, line {_bad_utf8_line(path)}: not UTF-8 ({exc.reason})") from None

    def _rows(self, fh: Any, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
        reader = csv.reader(fh, delimiter=self.options.delimiter)
        header = _header(next(reader, None), where)
        if header is None:
            return
        while True:
            start = reader.line_num + 1  # a quoted field may span lines: name where its row began
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise SeedError(f"{where}, line {start}: malformed CSV ({exc})") from None
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise SeedError(f"{where}, {_lines(start, reader.line_num)}: {len(cells)} fields but the header "
                                f"has {len(header)}{_unclosed_hint(start, reader.line_num)}")
            # Empty cells are missing values, so an empty answer is "no answer", not ""; an empty
            # question stays, to be said empty as JSONL's is (not "missing field").
            question = self.options.question_field
            yield reader.line_num, {k: v for k, v in zip(header, cells) if v != "" or k == question}


def _header(cells: list[str] | None, where: str) -> list[str] | None:
    """The column names; a name given twice would let one column silently replace the other."""
    if cells is None:
        return None
    names = [c.strip() for c in cells]
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise SeedError(f"{where}, line 1: column {name!r} appears twice in the header")
        seen.add(name)
    return names


def _lines(start: int, end: int) -> str:
    return f"line {end}" if start >= end else f"lines {start}-{end}"


def _unclosed_hint(start: int, end: int) -> str:
    return f" (is a quote opened on line {start} never closed?)" if end > start else ""


def _bad_utf8_line(path: Any) -> int:
    """The line of the first byte that is not UTF-8 (the text reader decodes ahead of the CSV reader,
    so its own position says nothing of which line it was)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return raw.count(b"\n", 0, exc.start) + 1
    return 1
