"""Seeds from a JSON Lines file: one JSON object per line; blank lines are skipped."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Iterator

from synthledger.engine.strategy import SeedError, Seed, SeedSource

from .rows import FieldOptions, build_seeds, resolve


class JsonlSeedSource(SeedSource):
    name: ClassVar[str] = "jsonl"

    class Options(FieldOptions):
        pass

    options: Options

    def load(self) -> list[Seed]:
        path = resolve(self.options.path, self.base_dir)
        if not path.is_file():
            raise SeedError(f"{path}: seed file not found")

        def rows() -> Iterator[tuple[int, dict[str, Any]]]:
            with path.open("rb") as fh:
                for number, raw in enumerate(fh, 1):
                    try:
                        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                    except UnicodeDecodeError as exc:
                        raise SeedError(f"{path}, line {number}: not UTF-8 ({exc.reason})") from None
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise SeedError(f"{path}, line {number}: bad JSON ({exc.msg} at column {exc.colno})") from None
                    if not isinstance(row, dict):
                        raise SeedError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
                    yield number, row

        return build_seeds(rows(), self.options, str(path))
