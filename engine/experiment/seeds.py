"""The seed pool and its nested subsets: what the grid holds fixed while it varies the rest.

Each replicate shuffles the pool once; its seed set of size |S| is the first |S| seeds of that
order, so |S|=16 is a subset of |S|=64 within a replicate, and replicates differ in which seeds
they draw. A generator source (reasoning-gym) makes a pool of max|S| x replicates seeds, so
replicates can draw different seeds even at the largest size.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from ..api import Seed
from .config import Experiment

SUBSET_FIELDS = {"source": "jsonl", "id_field": "id", "question_field": "question"}


def load_pool(exp: Experiment) -> list[Seed]:
    """Every seed the base config's source offers (a generator: enough for every replicate)."""
    from .. import host
    from ..errors import ConfigError, UnknownPlugin
    from ..run.config import validate_plugin_options

    seeds_cfg = dict(exp.base.get("seeds") or {})
    source = seeds_cfg.pop("source", "jsonl")
    seeds_cfg.pop("size", None)  # the grid decides |S|
    try:
        source_cls = host.get("seed_sources", source)
    except UnknownPlugin as exc:
        raise ConfigError(f"{exp.path}: experiment.base: [seeds] {exc}") from None
    if "size" in source_cls.Options.model_fields:
        seeds_cfg["size"] = max(exp.seed_sizes) * exp.section.replicates
    options = validate_plugin_options(source_cls.Options, seeds_cfg, "seeds")
    pool = source_cls(options, base_dir=exp.base_dir).load()
    if len(pool) < max(exp.seed_sizes):
        raise ConfigError(f"{exp.path}: experiment.seed_sizes: the largest seed set ({max(exp.seed_sizes)}) needs "
                          f"more seeds than the base config's source has ({len(pool)})")
    return pool


def subsets(pool: list[Seed], sizes: list[int], replicates: int, seed: int) -> dict[tuple[int, int], list[Seed]]:
    """(replicate, |S|) -> the seeds, nested within each replicate."""
    out: dict[tuple[int, int], list[Seed]] = {}
    for r in range(replicates):
        order = list(range(len(pool)))
        random.Random(f"experiment:{seed}:replicate:{r}").shuffle(order)
        for size in sizes:
            out[(r, size)] = [pool[i] for i in order[:size]]
    return out


def subset_path(workdir: Path, replicate: int, size: int) -> Path:
    return workdir / "seeds" / f"r{replicate}-s{size}.jsonl"


def write_subset(path: Path, seeds: list[Seed]) -> None:
    """Write the subset (atomically; identical content on every rerun, so a resume sees the same seeds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in seeds:
        row: dict[str, Any] = {"id": s.id, "question": s.question}
        if s.answer is not None:
            row["answer"] = s.answer
        lines.append(json.dumps(row, ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def seeds_section(path: Path) -> dict[str, Any]:
    """The [seeds] section of a cell's run config: exactly this subset, read from its file (rows
    without an answer are seeds without one: the default answer field is not required)."""
    return {**SUBSET_FIELDS, "path": str(path)}
