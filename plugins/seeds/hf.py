"""Seeds from a Hugging Face dataset: a `save_to_disk` folder, json/jsonl/parquet/csv files read
through `datasets.load_dataset`, or a hub dataset id (`path = "openai/gsm8k"`, `config = "main"`)
when no such local path exists. Only a hub id touches the network, and offline it fails with one
line saying so (a dataset already in the local cache still loads). `datasets` is imported only
when this source is used, so the core install does not need it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from synthledger.engine.api import Seed, SeedError, SeedSource

from .rows import FieldOptions, build_seeds, numbered, resolve

_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class HFSeedSource(SeedSource):
    name: ClassVar[str] = "hf"

    class Options(FieldOptions):
        split: str = "train"
        format: Literal["auto", "disk", "json", "parquet", "csv"] = "auto"
        config: str | None = None  # a hub dataset's configuration name (e.g. "main" for openai/gsm8k)

    options: Options

    def load(self) -> list[Seed]:
        path = resolve(self.options.path, self.base_dir)
        if not path.exists():
            if _HUB_ID.fullmatch(self.options.path) and Path(self.options.path).suffix.lower() not in _FORMATS:
                return self._load_hub(self.options.path, path)
            raise SeedError(f"{path}: seed dataset not found")
        try:
            import datasets
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SeedError("the 'hf' seed source needs the datasets package (pip install synthledger[seeds])") from exc
        fmt = self._format(path)
        where = f"{path} (split {self.options.split!r})"
        try:
            if fmt == "disk":
                loaded: Any = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset(fmt, data_files={self.options.split: str(path)})
        except Exception as exc:  # datasets raises many types; the user needs the file and the cause
            raise SeedError(f"{path}: could not load as {fmt} dataset ({type(exc).__name__}: {exc})") from exc
        if isinstance(loaded, datasets.DatasetDict):
            if self.options.split not in loaded:
                raise SeedError(f"{path}: no split {self.options.split!r} (splits: {', '.join(loaded)})")
            loaded = loaded[self.options.split]
        return build_seeds(numbered(loaded), self.options, where, unit="row")

    def _load_hub(self, repo: str, local: Path) -> list[Seed]:
        try:
            import datasets
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SeedError("the 'hf' seed source needs the datasets package (pip install synthledger[seeds])") from exc
        from synthledger.engine.output.hub import hub_offline

        where = f"hub dataset {repo!r} (split {self.options.split!r})"
        try:
            loaded = datasets.load_dataset(repo, self.options.config, split=self.options.split)
        except Exception as exc:  # datasets raises many types; the user needs the id and the cause
            if hub_offline():
                raise SeedError(f"offline: cannot fetch hub dataset {repo!r} (HF_HUB_OFFLINE is set and it is not "
                                f"in the local cache; no local path {local} either)") from None
            cause = " ".join(str(exc).split())[:200]
            raise SeedError(f"{where}: could not load ({type(exc).__name__}: {cause})") from None
        return build_seeds(numbered(loaded), self.options, where, unit="row")

    def _format(self, path: Path) -> str:
        if self.options.format != "auto":
            return self.options.format
        if path.is_dir():
            return "disk"
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise SeedError(f"{path}: cannot tell the dataset format from the name; set format")
        return fmt
