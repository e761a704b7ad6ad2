"""Everything an experiment checks and derives before its first event: cells, seed subsets, the
held-out examples, each strategy's minimum budget. Nothing here writes to the store."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, PluginError
from ..run.config import validate_plugin_options
from .cells import Cell, generation_dict, grid_cells, train_dict
from .config import Experiment
from .seeds import load_pool, subsets


def one_line(exc: BaseException) -> str:
    """A multi-line config error as the one line the experiment command prints."""
    lines = [part.strip() for part in str(exc).splitlines() if part.strip()]
    return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")


@dataclass
class Prepared:
    exp: Experiment
    cells: list[Cell]
    subsets: dict[tuple[int, int], list[Any]]
    heldout: list[dict[str, str]]
    minimum: dict[str, int] = field(default_factory=dict)  # strategy -> counted queries of one sample
    student: str = ""

    def digests(self) -> dict[str, str]:
        """What the cells are made from, as digests (see ExperimentGrid.inputs)."""
        seeds = {f"{rep}/{size}": [[s.question, s.answer] for s in subset]
                 for (rep, size), subset in sorted(self.subsets.items())}
        return {"seeds": _digest(seeds), "heldout": _digest(self.heldout)}

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise KeyError(cell_id)


def _minimum_budget(cfg: Any, parts: Any, seeds: list[Any]) -> tuple[int, str]:
    """Counted queries one sample of the cell's strategy (plus its verifier) needs, and their split.
    The strategy is made again on `seeds` (the cell's subset); task and verifier are the run's own."""
    from .. import host

    from ..plugin_faults import guarded, guarded_iter

    named = host.get_host().describe("strategies", cfg.strategy.name)
    strat_cls = host.get("strategies", cfg.strategy.name)
    strategy = guarded(f"{named} (making it)", strat_cls, validate_plugin_options(
        strat_cls.Options, cfg.strategy.extras(), "strategy"), seeds, parts.task, cfg.run.seed)
    first = next(guarded_iter(f"{named} plan()", strategy.plan()), None)
    if first is None:
        raise ConfigError(f"{named} plans no item for a seed set of {len(seeds)}: its cells could make no data")
    cost = dict(guarded(f"{named} item_cost()", strategy.item_cost, first))
    for role, n in guarded(f"verifier {cfg.verifier.name!r} item_cost()", parts.verifier.item_cost).items():
        cost[role] = cost.get(role, 0) + n
    counted = cfg.budget.counted_roles
    parts = {r: n for r, n in cost.items() if counted is None or r in counted}
    return sum(parts.values()), ", ".join(f"{r} {n}" for r, n in sorted(parts.items()))


def _check_strategies(exp: Experiment, subs: dict[tuple[int, int], list[Any]]) -> dict[str, int]:
    from .. import host
    from ..run.assemble import build_endpoints, build_parts
    from ..run.config import config_from_dict

    known = host.get_host().names("strategies")
    for name in exp.section.strategy_options:  # a misspelt one would leave its strategy on defaults, silently
        if name not in known:
            raise ConfigError(f"{exp.path}: experiment.strategy_options.{name}: no strategy of that name "
                              f"(known: {', '.join(known)})")
    minimum: dict[str, int] = {}
    size = exp.seed_sizes[0]
    for strategy in exp.strategies:
        cell = Cell("grid", strategy, size, exp.budgets[size][0], 0)
        data = generation_dict(exp, cell)
        # Validate against the base's own seed section: the subset files are written only once all
        # checks pass.
        data["seeds"] = {**(exp.base.get("seeds") or {})}
        cfg = config_from_dict(data, base_dir=exp.base_dir, source=f"experiment.base with strategy {strategy}")
        parts = build_parts(cfg)
        build_endpoints(cfg, parts.roles)  # provider settings and API keys, before anything is spent
        need, split = _minimum_budget(cfg, parts, subs[(0, size)])
        minimum[strategy] = need
        for s, budgets in exp.budgets.items():
            low = [q for q in budgets if q < need]
            if low:
                raise ConfigError(f"{exp.path}: experiment budget {low[0]} at |S|={s} is below {strategy}'s minimum "
                                  f"of {need} counted queries per sample ({split})")
    return minimum


def _check_baselines(exp: Experiment, subs: dict[tuple[int, int], list[Any]]) -> None:
    """The seeds-only baseline trains on the seeds' own answers: seeds without one leave it nothing
    (QA: every grid cell finished, then the baseline failed and the experiment exited 1)."""
    if not exp.section.baselines:
        return
    unanswered = {s.question for seeds in subs.values() for s in seeds if not s.answer}
    if unanswered:
        raise ConfigError(f"{exp.path}: experiment.baselines = true trains a student on the seeds' own answers, and "
                          f"{len(unanswered)} of the seeds have none; set experiment.baselines = false, or give "
                          "the seeds answers")


def _check_train(exp: Experiment) -> str:
    from .. import host
    from ..student.runs import TrainConfig

    try:
        cfg = TrainConfig.model_validate(train_dict(exp, Cell("untrained")))
    except ValidationError as exc:
        from .config import _one_line

        raise _one_line(exc, f"{exp.train_path} (experiment.train)") from None
    trainer_cls = host.get("trainers", cfg.trainer.name)
    options = validate_plugin_options(trainer_cls.Options, cfg.trainer.extras(), "trainer")
    student = str(getattr(options, "student", "") or "")
    if student:
        from ..student.runs import _check_model

        # An unknown student, or a folder whose config or tokenizer does not load, fails now, not
        # in its first cell's job after the generation was paid for.
        _check_model(student, f"{exp.train_path}: trainer.student")
    return student


def _heldout(exp: Experiment, subs: dict[tuple[int, int], list[Any]]) -> list[dict[str, str]]:
    from .. import host

    ev = exp.section.eval
    ev_cls = host.get("evaluators", ev.evaluator)
    options = validate_plugin_options(ev_cls.Options, {"heldout": ev.heldout, "limit": ev.limit}, "experiment.eval")
    try:
        host.get("tasks", exp.task)
    except PluginError as exc:  # (the grid's eval.task, or the base config's [task] it defaults to)
        if ev.task:
            raise ConfigError(f"{exp.path}: experiment.eval.task: {exc}") from None
        raise ConfigError(f"{(exp.path.resolve().parent / exp.section.base).resolve()}: task.name: {exc}") from None
    if not hasattr(ev_cls(options), "heldout"):
        raise ConfigError(f"{exp.path}: experiment.eval.evaluator {ev.evaluator!r} cannot load a held-out set")
    questions = {s.question for seeds in subs.values() for s in seeds}
    try:
        return ev_cls(options).heldout(questions, base_dir=str(exp.path.resolve().parent))
    except ValueError as exc:
        raise ConfigError(f"{exp.path}: experiment.eval.heldout: {exc}") from None  # (missing, or overlapping)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(exp: Experiment) -> Prepared:
    """Every check, in the order a user would fix things; raises ConfigError with one line."""
    try:
        pool = load_pool(exp)
        subs = subsets(pool, exp.seed_sizes, exp.section.replicates, exp.section.seed)
        minimum = _check_strategies(exp, subs)
        _check_baselines(exp, subs)
        student = _check_train(exp)
        heldout = _heldout(exp, subs)
    except (ValueError, PluginError) as exc:  # ConfigError, SeedError, a missing API key...
        raise ConfigError(one_line(exc)) from None
    return Prepared(exp, grid_cells(exp), subs, heldout, minimum, student)


def heldout_path(exp: Experiment) -> Path:
    return exp.workdir / "heldout.jsonl"
