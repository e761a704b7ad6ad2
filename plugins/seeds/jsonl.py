"""Seeds from a JSON Lines file: one JSON object per line; blank lines are skipped."""

from __future__ import annotations

from typing import Any, ClassVar, Iterator

from synthledger.engine.output.jsonl import JsonlError, read_jsonl
from synthledger.engine.api import SeedError, Seed, SeedSource

from .rows import FieldOptions, build_seeds, seed_file


class JsonlSeedSource(SeedSource):
    name: ClassVar[str] = "jsonl"

    class Options(FieldOptions):
        pass

    options: Options

    def load(self) -> list[Seed]:
        path = seed_file(self.options.path, self.base_dir)

        def rows() -> Iterator[tuple[int, dict[str, Any]]]:
            try:
                yield from read_jsonl(path)
            except JsonlError as exc:
                raise SeedError(str(exc)) from None

        return build_seeds(rows(), self.options, str(path))
