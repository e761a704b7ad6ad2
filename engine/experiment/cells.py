"""The cells of a grid and the configs each one runs with.

A grid cell (strategy, |S|, Q, replicate) is a generation run with budget Q on the replicate's
seed subset, then training and evaluation. Baselines are cells too: the untrained student (no
generation, no training) and, per (|S|, replicate), a student trained on the seeds alone (Q = 0).
Generation order is by replicate, |S|, strategy and then ascending Q, so the small cells reach
training early while the large ones reuse their answers and pay only the difference.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..run.config import RunConfig, config_from_dict
from .config import Experiment
from .seeds import seeds_section, subset_path

SHORT = {"answer_augmentation": "aa", "question_rephrase": "qr", "new_question": "nq"}


@dataclass(frozen=True)
class Cell:
    kind: str  # "grid" | "seeds_only" | "untrained"
    strategy: str | None = None
    seed_size: int | None = None
    budget: int | None = None
    replicate: int | None = None

    @property
    def id(self) -> str:
        if self.kind == "untrained":
            return "untrained"
        if self.kind == "seeds_only":
            return f"seeds_only/s{self.seed_size}/r{self.replicate}"
        return f"{self.strategy}/s{self.seed_size}/q{self.budget}/r{self.replicate}"

    @property
    def slug(self) -> str:
        if self.kind == "grid":
            return f"{SHORT.get(self.strategy or '', self.strategy)}-s{self.seed_size}-q{self.budget}-r{self.replicate}"
        return self.id.replace("/", "-")

    @property
    def ratio(self) -> float | None:
        if self.budget is None or not self.seed_size:
            return None
        return round(self.budget / self.seed_size, 6)

    @property
    def generates(self) -> bool:
        return self.kind != "untrained"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self), "ratio": self.ratio}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        return cls(d["kind"], d.get("strategy"), d.get("seed_size"), d.get("budget"), d.get("replicate"))


def grid_cells(exp: Experiment) -> list[Cell]:
    """Every cell, baselines first (the untrained student needs no generation)."""
    cells: list[Cell] = []
    if exp.section.baselines:
        cells.append(Cell("untrained"))
    for r in range(exp.section.replicates):
        for size in exp.seed_sizes:
            if exp.section.baselines:
                cells.append(Cell("seeds_only", None, size, 0, r))
            for strategy in exp.strategies:
                for q in exp.budgets[size]:
                    cells.append(Cell("grid", strategy, size, q, r))
    return cells


def strategy_section(exp: Experiment, strategy: str) -> dict[str, Any]:
    """`[strategy]` for a cell: the base's own options when it names this strategy, then the grid's
    `strategy_options.<name>` on top."""
    base = dict(exp.base.get("strategy") or {})
    options = {k: v for k, v in base.items() if k != "name"} if base.get("name") == strategy else {}
    options.update(exp.section.strategy_options.get(strategy, {}))
    return {"name": strategy, **options}


def run_name(exp: Experiment, cell: Cell) -> str:
    return f"{exp.name}.{cell.slug}"


def generation_dict(exp: Experiment, cell: Cell) -> dict[str, Any]:
    """The run config of a cell's generation, as a plain dict (validated by `generation_config`).
    The store is not written into it: a database URL may hold a password."""
    data = copy.deepcopy(exp.base)
    run = dict(data.get("run") or {})
    run.update({"name": run_name(exp, cell), "replicate": cell.replicate or 0})
    data["run"] = run
    assert cell.seed_size is not None and cell.replicate is not None
    path = subset_path(exp.workdir, cell.replicate, cell.seed_size)
    data["seeds"] = seeds_section(path)
    strategy = cell.strategy or exp.strategies[0]  # seeds only: any strategy, it asks nothing
    data["strategy"] = strategy_section(exp, strategy)
    budget = dict(data.get("budget") or {})
    budget["queries"] = cell.budget or 0
    data["budget"] = budget
    return data


def generation_config(exp: Experiment, cell: Cell) -> RunConfig:
    data = generation_dict(exp, cell)
    return config_from_dict(data, base_dir=exp.base_dir, source=f"experiment.base for cell {cell.id}")


def train_dict(exp: Experiment, cell: Cell) -> dict[str, Any]:
    """The train config of a cell: the experiment's, writing to the cell's own folder."""
    data = copy.deepcopy(exp.train)
    data.pop("eval", None)  # the experiment evaluates every cell on one held-out set
    output = dict(data.get("output") or {})
    output["dir"] = str(student_dir(exp, cell))
    data["output"] = output
    if cell.kind == "seeds_only":
        data["data"] = {**(data.get("data") or {}), "include_seeds": True}
    return data


def student_dir(exp: Experiment, cell: Cell) -> Path:
    return exp.workdir / "students" / cell.slug


def predictions_path(exp: Experiment, cell: Cell) -> Path:
    return exp.workdir / "evals" / f"{cell.slug}.jsonl"
