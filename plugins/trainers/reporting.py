"""What a training run tells the outside world while it runs: events at logging steps, a rich
progress bar, and afterwards the loss curve as JSON and as a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

OnEvent = Callable[[str, dict[str, Any]], None]

EVERY_STEP_BELOW = 50  # runs with fewer optimizer steps than this log the loss at every step


class EventCallback(TrainerCallback):
    def __init__(self, on_event: OnEvent, progress: bool, every_step_if_short: bool = True) -> None:
        self.on_event = on_event
        self.every_step_if_short = every_step_if_short
        self.curve: list[dict[str, float]] = []
        self._progress_enabled = progress
        self._progress: Any = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
        if self._progress_enabled:
            from ..step_progress import StepProgress

            self._progress = StepProgress("training", state.max_steps, loss=True)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.every_step_if_short and 0 < state.max_steps < EVERY_STEP_BELOW:
            # A short run logged every 10 steps has a curve of a point or two, or none at all.
            control.should_log = True
        if self._progress is not None:
            self._progress.update(completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        logs = logs or {}
        if "loss" not in logs:
            return
        point = {
            "step": int(state.global_step),
            "loss": float(logs["loss"]),
            "epoch": float(logs.get("epoch", state.epoch or 0.0)),
        }
        for key in ("learning_rate", "grad_norm"):
            if isinstance(logs.get(key), (int, float)) and math.isfinite(float(logs[key])):
                point[key] = float(logs[key])
        self.curve.append(point)
        self.on_event("training_progress", dict(point, max_steps=int(state.max_steps)))
        if self._progress is not None:
            self._progress.update(loss=f"{point['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def write_loss_curve(curve: list[dict[str, float]], out_dir: Path) -> dict[str, str]:
    json_path = out_dir / "loss_curve.json"
    json_path.write_text(json.dumps(curve, indent=1) + "\n")
    png_path = out_dir / "loss_curve.png"
    # The object-oriented Agg API: no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if curve:
        axes.plot([p["step"] for p in curve], [p["loss"] for p in curve], marker="o", markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_title("LoRA SFT loss")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path)
    return {"loss_curve": str(json_path), "loss_plot": str(png_path)}
