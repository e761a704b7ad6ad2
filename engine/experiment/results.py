"""The experiment's state and table, folded from its run's events.

A cell counts once however often the experiment was interrupted: the latest record of each cell
id wins, and only `cell_finished` carries a score. The `--json` object built here is the stable
output documented in the README.
"""

from __future__ import annotations

import zlib
from functools import partial
from dataclasses import dataclass, field
from typing import Any, Callable

from ...store.eventstore import EventStore, RunInfo
from ..ledger.ledger import Amount
from ..output.quality import pooled
from .cells import Cell
from .stats import Scored, bootstrap, cell_interval, crossover, interval, mean_over
from ..ledger.events import (CellFailed, CellFinished, CellGenerated, CellStarted, ExperimentGrid,
                             ExperimentResult, RunFinished, RunResumed, RunStarted)

QUESTION_FAMILY = ("new_question", "question_rephrase")  # the crossover's "to" side, first found
ANSWER_FAMILY = "answer_augmentation"


@dataclass
class CellRecord:
    cell: Cell
    generate_run: str | None = None
    generated: dict[str, Any] | None = None
    finished: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        if self.finished is not None:
            return "finished"
        if self.failed is not None:
            return "failed"
        if self.generated is not None:  # (an interrupted generation is resumed by the next run)
            return "interrupted" if self.generated.get("status") == "interrupted" else "generated"
        return "generating" if self.generate_run else "pending"


@dataclass
class ExperimentState:
    info: RunInfo
    cells: dict[str, CellRecord] = field(default_factory=dict)
    heldout: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # see ExperimentGrid.inputs
    bootstrap: int = 1000
    counted_roles: list[str] | None = None  # the base config's: what a budget Q of the grid counts (None: every role)
    result: dict[str, Any] | None = None
    stale: bool = True  # a cell changed after the last recorded result
    status: str | None = None


def _generating(state: ExperimentState, rec: CellRecord, p: dict[str, Any]) -> None:
    if p["stage"] == "generate":
        rec.generate_run, rec.generated = p.get("run_id"), None


def _generated(state: ExperimentState, rec: CellRecord, p: dict[str, Any]) -> None:
    rec.generated, rec.generate_run = p, p.get("generate_run") or rec.generate_run


def _finished(state: ExperimentState, rec: CellRecord, p: dict[str, Any]) -> None:
    rec.finished, rec.failed = p, None


def _failed(state: ExperimentState, rec: CellRecord, p: dict[str, Any]) -> None:
    rec.failed = p


_CELL_HANDLERS: dict[str, Callable[[ExperimentState, CellRecord, dict[str, Any]], None]] = {
    CellStarted.TYPE: _generating, CellGenerated.TYPE: _generated,
    CellFinished.TYPE: _finished, CellFailed.TYPE: _failed,
}


def _on_cell(state: ExperimentState, p: dict[str, Any], handle: Callable[..., None]) -> None:
    rec = state.cells.get(p["cell"])
    if rec is not None:
        handle(state, rec, p)
        state.stale = True


def _started(state: ExperimentState, p: dict[str, Any]) -> None:
    config = p.get("config") or {}
    state.bootstrap = int((config.get("experiment") or {}).get("bootstrap") or 1000)
    state.counted_roles = ((config.get("base") or {}).get("budget") or {}).get("counted_roles")


def _grid(state: ExperimentState, p: dict[str, Any]) -> None:
    state.cells = {c["id"]: CellRecord(Cell.from_dict(c)) for c in p["cells"]}
    state.heldout = p.get("heldout") or {}
    state.inputs = p.get("inputs") or {}


def _result(state: ExperimentState, p: dict[str, Any]) -> None:
    state.result, state.stale = p["result"], False


def _run_finished(state: ExperimentState, p: dict[str, Any]) -> None:
    state.status = p["status"]


def _run_resumed(state: ExperimentState, p: dict[str, Any]) -> None:
    state.status = None


_HANDLERS: dict[str, Callable[[ExperimentState, dict[str, Any]], None]] = {
    RunStarted.TYPE: _started, ExperimentGrid.TYPE: _grid, ExperimentResult.TYPE: _result,
    RunFinished.TYPE: _run_finished, RunResumed.TYPE: _run_resumed,
    **{t: partial(_on_cell, handle=h) for t, h in _CELL_HANDLERS.items()},
}


def load_state(store: EventStore, ref: str) -> ExperimentState:
    info = store.resolve(ref)
    if info.kind != "experiment":
        raise ValueError(f"run {info.id} ({info.name}) is a {info.kind!r} run, not an experiment")
    state = ExperimentState(info)
    for ev in store.iter_events(info.id, types=list(_HANDLERS)):
        _HANDLERS[ev.type](state, ev.payload)
    return state


def _key(cell: Cell) -> tuple:
    if cell.kind == "grid":
        return ("grid", cell.strategy, cell.seed_size, cell.budget)
    return (cell.kind, cell.seed_size)


def _scored(state: ExperimentState) -> dict[int, dict[tuple, Scored]]:
    """replicate -> key -> outcomes; the untrained student (one cell) belongs to every replicate."""
    reps: dict[int, dict[tuple, Scored]] = {}
    shared: list[tuple[tuple, Scored]] = []
    for rec in state.cells.values():
        if rec.finished is None:
            continue
        scored = Scored.parse(rec.finished["outcomes"])
        if rec.cell.replicate is None:
            shared.append((_key(rec.cell), scored))
        else:
            reps.setdefault(rec.cell.replicate, {})[_key(rec.cell)] = scored
    if not reps and shared:
        reps[0] = {}
    for cells in reps.values():
        cells.update(shared)
    return reps


def _amount(p: dict[str, Any] | None, key: str) -> Amount:
    return Amount.of((p or {}).get(key))


def _cell_json(rec: CellRecord, n: int, draws: int) -> dict[str, Any]:
    c, f, g = rec.cell, rec.finished or {}, rec.generated or {}
    scored = Scored.parse(f["outcomes"]) if f else None
    low, high = cell_interval(scored, n, draws, zlib.crc32(c.id.encode())) if scored else (None, None)
    paid, reused = _amount(g, "paid"), _amount(g, "reused")
    return {"id": c.id, "kind": c.kind, "strategy": c.strategy, "seed_size": c.seed_size, "budget": c.budget,
            "ratio": c.ratio, "replicate": c.replicate, "status": rec.status,
            "accuracy": scored.accuracy() if scored else None, "ci_low": low, "ci_high": high,
            "n": f.get("n"), "correct": f.get("correct"), "rows": f.get("rows", g.get("rows")),
            "paid_queries": paid.queries, "reused_queries": reused.queries, "usd": round(paid.usd, 6),
            "lost_queries": g.get("lost", 0),
            "generate_run": rec.generate_run, "train_run": f.get("train_run"), "eval_run": f.get("eval_run"),
            "wall_s": {**({"generate": g["wall_s"]} if g.get("wall_s") else {}), **(f.get("wall_s") or {})},
            "quality": g.get("quality") or None,
            "error": (rec.failed or {}).get("reason") if rec.status == "failed" else None}


def _rows(cells: list[dict[str, Any]], points: dict[tuple, float | None],
          cis: dict[tuple, tuple[float | None, float | None]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        key = ("grid", c["strategy"], c["seed_size"], c["budget"]) if c["kind"] == "grid" else (c["kind"], c["seed_size"])
        groups.setdefault(key, []).append(c)
    out = []
    for key, members in groups.items():
        done = [m for m in members if m["status"] == "finished"]
        rows = [m["rows"] for m in done if m["rows"] is not None]
        low, high = cis.get(key, (None, None))
        out.append({"kind": members[0]["kind"], "strategy": members[0]["strategy"], "seed_size": members[0]["seed_size"],
                    "budget": members[0]["budget"], "ratio": members[0]["ratio"], "replicates": len(done),
                    "accuracy": points.get(key), "ci_low": low, "ci_high": high,
                    "rows": sum(rows) / len(rows) if rows else None,
                    "paid_queries": sum(m["paid_queries"] for m in members),
                    "reused_queries": sum(m["reused_queries"] for m in members),
                    "usd": round(sum(m["usd"] for m in members), 6),
                    "quality": pooled([m.get("quality") for m in members])})
    return out


def _crossovers(state: ExperimentState, points: dict[tuple, float | None],
                worlds: list[dict[tuple, float | None]]) -> list[dict[str, Any]]:
    strategies = {rec.cell.strategy for rec in state.cells.values() if rec.cell.kind == "grid"}
    target = next((s for s in QUESTION_FAMILY if s in strategies), None)
    if ANSWER_FAMILY not in strategies or target is None:
        return []
    out = []
    sizes = sorted({rec.cell.seed_size for rec in state.cells.values() if rec.cell.kind == "grid"})
    for size in sizes:
        budgets = sorted({rec.cell.budget for rec in state.cells.values()
                          if rec.cell.kind == "grid" and rec.cell.seed_size == size})
        ratios = [q / size for q in budgets]

        def diffs(values: dict[tuple, float | None]) -> list[float | None]:
            out_d: list[float | None] = []
            for q in budgets:
                a, b = values.get(("grid", ANSWER_FAMILY, size, q)), values.get(("grid", target, size, q))
                out_d.append(None if a is None or b is None else b - a)
            return out_d

        ratio, note = crossover(ratios, diffs(points))
        found = [x for x in (crossover(ratios, diffs(w))[0] for w in worlds) if x is not None]
        low, high = interval(found) if ratio is not None else (None, None)
        out.append({"seed_size": size, "ratio": ratio, "ci_low": low, "ci_high": high, "from": ANSWER_FAMILY,
                    "to": target, "support": round(len(found) / len(worlds), 3) if worlds else None,
                    "note": note})
    return out


def build_result(state: ExperimentState) -> dict[str, Any]:
    """The experiment as the stable `--json` object (see README: Machine-readable output)."""
    n = int(state.heldout.get("n") or 0)
    draws = state.bootstrap
    reps = _scored(state)
    keys = {k for cells in reps.values() for k in cells}
    points = {k: mean_over(reps, k) for k in keys}
    worlds = bootstrap(reps, n, draws) if reps and n else []
    cis = {k: interval([w[k] for w in worlds if w.get(k) is not None]) for k in keys}
    cells = [_cell_json(rec, n, draws) for rec in state.cells.values()]
    paid, reused = Amount(), Amount()
    for rec in state.cells.values():
        paid.add(_amount(rec.generated, "paid"))
        reused.add(_amount(rec.generated, "reused"))
    rows = _rows(cells, points, cis)
    info = state.info
    return {
        "experiment": {"id": info.id, "name": info.name, "status": state.status or info.status,
                       "counted_roles": state.counted_roles},
        "heldout": state.heldout,
        "cells": [c for c in cells if c["kind"] == "grid"],
        "summary": [r for r in rows if r["kind"] == "grid"],
        "baselines": [r for r in rows if r["kind"] != "grid"],
        "baseline_cells": [c for c in cells if c["kind"] != "grid"],
        "crossovers": _crossovers(state, points, worlds),
        "paid": paid.as_dict(),
        "reused": reused.as_dict(),
    }


def current_result(state: ExperimentState) -> dict[str, Any]:
    """The recorded result when no cell changed since; else computed now."""
    if state.result is not None and not state.stale:
        result = dict(state.result)
        result["experiment"] = {**result["experiment"], "status": state.status or state.info.status}
        return result
    return build_result(state)
