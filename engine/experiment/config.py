"""The experiment's grid file, validated before anything runs.

Everything that can be wrong with an experiment should be found here, in seconds, not after an
hour of generation: unknown keys, an empty grid, a budget below what one sample of a strategy
costs, a base or train config that does not validate, a held-out set that shares questions with a
seed subset. Every failure is one line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt, ValidationError

from ...store.hashing import canonical
from ..errors import ConfigError
from ..run.config import _Strict, apply_overrides
from ..run.configfile import read_toml as _read_toml
from ..run.config_errors import format_errors

DEFAULT_WORKDIR = ".synthledger/experiments/{name}"


class ExecutorSettings(_Strict):
    parallel: int = Field(default=2, ge=1)  # local executor: train/eval jobs at once
    num_cpus: float = Field(default=1, gt=0)  # per train/eval task: torch threads, and a Ray resource
    num_gpus: float = Field(default=0, ge=0)  # per train/eval task (Ray resource)
    address: str | None = None  # Ray cluster address; None starts a local Ray instance


class EvalSettings(_Strict):
    heldout: str
    limit: int | None = Field(default=None, ge=1)
    task: str | None = None  # default: the base run config's task
    evaluator: str = "accuracy"
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=256, ge=1)
    include_instruction: bool = False
    system_prompt: str | None = None


class ExperimentSection(_Strict):
    name: str = Field(min_length=1)
    base: str
    train: str
    strategies: list[str]
    # Strict: "4", 2.0 or true are a typo in a grid, not a budget of 4, 2 replicates or a budget of 1.
    seed_sizes: list[StrictInt]
    budgets: list[StrictInt] | None = None
    ratios: list[float] | None = None
    replicates: StrictInt = Field(default=1, ge=1)
    baselines: bool = True
    seed: int = 0  # shuffles the seed pool of each replicate
    bootstrap: int = Field(default=1000, ge=100)
    workdir: str | None = None
    strategy_options: dict[str, dict[str, Any]] = {}
    eval: EvalSettings
    executor: ExecutorSettings = ExecutorSettings()


class GridFile(_Strict):
    experiment: ExperimentSection


@dataclass
class Experiment:
    """A validated grid, with its base and train configs read and its paths resolved."""

    name: str
    path: Path
    section: ExperimentSection
    base: dict[str, Any]  # the base run config as written (relative paths resolve in base_dir)
    base_dir: str
    train: dict[str, Any]  # the train config as written
    workdir: Path
    budgets: dict[int, list[int]] = field(default_factory=dict)  # seed size -> budgets Q, ascending
    task: str = "gsm8k"

    @property
    def strategies(self) -> list[str]:
        return self.section.strategies

    @property
    def train_path(self) -> Path:
        """The train config file, as errors about its keys name it."""
        return (self.path.resolve().parent / self.section.train).resolve()

    @property
    def seed_sizes(self) -> list[int]:
        return sorted(self.section.seed_sizes)

    def snapshot(self) -> dict[str, Any]:
        """What the experiment is: recorded in its run, and hashed to recognise it on a rerun."""
        return {"experiment": self.section.model_dump(mode="json", exclude={"executor", "workdir"}),
                "base": self.base, "train": self.train}

    def grid_hash(self) -> str:
        return hashlib.sha256(canonical(self.snapshot())).hexdigest()[:16]


def _one_line(exc: ValidationError, where: str) -> ConfigError:
    """The run config's wording (a misspelt key gets its "did you mean"), on one line."""
    lines = format_errors(exc, model=GridFile).splitlines()
    return ConfigError(f"{where}: " + "; ".join(line.strip() for line in lines))


def _known_strategies(names: list[str], where: str) -> None:
    """An unknown name is the grid file's error, not a `[strategy]` section the user never wrote."""
    from .. import host
    from ..run.config_errors import suggestion

    known = host.get_host().names("strategies")
    for name in names:
        if name not in known:
            raise ConfigError(f"{where}: experiment.strategies: no strategy named {name!r}{suggestion(name, known)} "
                              f"(known: {', '.join(known)})")


def _grid_shape(sec: ExperimentSection, where: str) -> dict[int, list[int]]:
    """Budgets per seed size, after the checks that need nothing but the grid file."""
    if not sec.strategies:
        raise ConfigError(f"{where}: experiment.strategies is empty: the grid has no cells")
    if not sec.seed_sizes:
        raise ConfigError(f"{where}: experiment.seed_sizes is empty: the grid has no cells")
    for key in ("strategies", "seed_sizes"):
        values = getattr(sec, key)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: experiment.{key} lists a value twice")
    _known_strategies(sec.strategies, where)
    if (sec.budgets is None) == (sec.ratios is None):
        raise ConfigError(f"{where}: set exactly one of experiment.budgets (queries Q) and experiment.ratios "
                          "(Q = ratio x |S|)")
    values = sec.budgets if sec.budgets is not None else sec.ratios
    key = "budgets" if sec.budgets is not None else "ratios"
    if not values:
        raise ConfigError(f"{where}: experiment.{key} is empty: the grid has no cells")
    if any(not math.isfinite(v) for v in values):  # (TOML takes inf and nan as floats)
        raise ConfigError(f"{where}: experiment.{key} must be finite numbers, got {values}")
    if any(v <= 0 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"{where}: experiment.{key} must be distinct positive numbers, got {values}")
    if any(s <= 0 for s in sec.seed_sizes):
        raise ConfigError(f"{where}: experiment.seed_sizes must be positive, got {sec.seed_sizes}")
    out: dict[int, list[int]] = {}
    for size in sorted(sec.seed_sizes):
        if sec.budgets is not None:
            out[size] = sorted(sec.budgets)
        else:
            qs = sorted({max(1, math.floor(r * size + 0.5)) for r in sec.ratios or []})
            if len(qs) != len(sec.ratios or []):
                raise ConfigError(f"{where}: experiment.ratios {sec.ratios} give the same budget twice at "
                                  f"|S|={size}; use ratios further apart")
            out[size] = qs
    return out


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read and check the grid file and the configs it names (not yet the plugins: see checks.py)."""
    path = Path(path)
    data = apply_overrides(_read_toml(path, "experiment file"), overrides or [])
    if "experiment" not in data and {"run", "teacher", "seeds"} & set(data):
        raise ConfigError(f"{path} is a run config, not an experiment grid (it has no [experiment]): "
                          f"run it with `generate -c {path}`")
    try:
        sec = GridFile.model_validate(data).experiment
    except ValidationError as exc:
        raise _one_line(exc, str(path)) from None
    budgets = _grid_shape(sec, str(path))
    root = path.resolve().parent
    base_path = (root / sec.base).resolve()
    train_path = (root / sec.train).resolve()
    base = _read_toml(base_path, "experiment.base: run config")
    train = _read_toml(train_path, "experiment.train: train config")
    # {name} in a workdir of one's own too: one grid file can then run under several names.
    workdir = Path((sec.workdir or DEFAULT_WORKDIR).replace("{name}", sec.name))
    if sec.workdir and not workdir.is_absolute():
        workdir = root / workdir
    task = sec.eval.task or str((base.get("task") or {}).get("name") or "gsm8k")
    return Experiment(name=sec.name, path=path, section=sec, base=base, base_dir=str(base_path.parent),
                      train=train, workdir=workdir.resolve(), budgets=budgets, task=task)
