"""Events of an experiment run (kind "experiment"): its grid, each cell's stages, its result.

The experiment's table is a fold over these (engine/experiment/results.py); each cell links the
generation, training and evaluation runs it consisted of, which keep their own events.
"""

from __future__ import annotations

from typing import Any, Literal

from .event_base import EventBase


class _ExperimentEvent(EventBase):
    pass


class ExperimentGrid(_ExperimentEvent):
    """The cells the experiment will run and the held-out examples every cell is scored on."""

    type: Literal["experiment_grid"] = "experiment_grid"
    grid_hash: str
    cells: list[dict[str, Any]]
    heldout: dict[str, Any] = {}
    # Digests of what the cells were made from ("seeds": every cell's seed subset, "heldout": the
    # examples they are scored on): the grid hash names the files, and a file edited between two
    # sessions would mix two data sets in one table.
    inputs: dict[str, str] = {}


class CellStarted(_ExperimentEvent):
    """A stage of a cell began; `run_id` is the generation run it extends (or trains on)."""

    type: Literal["cell_started"] = "cell_started"
    cell: str
    stage: Literal["generate", "train_eval"]
    run_id: str | None = None


class CellGenerated(_ExperimentEvent):
    """A cell's generation ended; `paid` and `reused` as `{queries, input_tokens, output_tokens, usd}`."""

    type: Literal["cell_generated"] = "cell_generated"
    cell: str
    generate_run: str | None
    status: str
    rows: int = 0
    paid: dict[str, Any] = {}
    reused: dict[str, Any] = {}
    wall_s: float = 0.0
    # Queries out when a process was killed: spent (their outcome is unknown) and never answered, so
    # the cell was trained on fewer answers than its budget paid for.
    lost: int = 0
    # The generated data's quality in brief (`output.quality.brief`): answers, agreement with the
    # seeds' references, truncation and duplicate rates; empty for cells recorded before it existed.
    quality: dict[str, Any] = {}


class CellFinished(_ExperimentEvent):
    """A cell's score. `outcomes` has one character per held-out example, in the grid's order:
    1 correct, 0 wrong, - not scored (the question was in this cell's training data)."""

    type: Literal["cell_finished"] = "cell_finished"
    cell: str
    generate_run: str | None = None
    train_run: str | None = None
    eval_run: str
    accuracy: float
    n: int
    correct: int
    outcomes: str
    rows: int = 0
    wall_s: dict[str, float] = {}


class CellFailed(_ExperimentEvent):
    type: Literal["cell_failed"] = "cell_failed"
    cell: str
    stage: str
    reason: str


class ExperimentResult(_ExperimentEvent):
    """The table as the experiment computed it when its last cell finished (a fold of the cells)."""

    type: Literal["experiment_result"] = "experiment_result"
    result: dict[str, Any]


EXPERIMENT_EVENTS = (ExperimentGrid, CellStarted, CellGenerated, CellFinished, CellFailed, ExperimentResult)
