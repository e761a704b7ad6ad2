"""Progress of a counted loop a user waits on (training steps, evaluated examples), on stderr.

On a terminal, a rich bar. Anywhere else (a log file, CI, `2> log`) rich draws nothing until the
bar stops, so a 20-minute evaluation looked hung: there, a plain line every few seconds instead,
in the shape `generate` prints its own (`[   12.3s] evaluating: 16/50`)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

LINE_EVERY_S = 5.0  # as a generation run's plain progress lines
ENV_EVERY = "SYNTHLEDGER_PROGRESS_EVERY_S"  # another spacing for the plain lines (a log's granularity)


def line_every_s() -> float:
    try:
        value = float(os.environ.get(ENV_EVERY, LINE_EVERY_S))
    except ValueError:
        return LINE_EVERY_S
    return value if value >= 0 else LINE_EVERY_S


class StepProgress:
    def __init__(self, label: str, total: int, *, loss: bool = False) -> None:
        from rich.console import Console

        self.label, self.total, self.with_loss = label, total, loss
        self.completed, self.loss = 0, "-"
        self._t0 = self._last_line = time.monotonic()
        self._every = line_every_s()
        self._bar: Any = None
        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = [TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(),
                       *([TextColumn("loss {task.fields[loss]}")] if loss else []), TimeRemainingColumn()]
            self._bar = Progress(*columns, console=console)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, loss="-")
        self._open = True

    def update(self, *, completed: int | None = None, advance: int = 0, loss: str | None = None) -> None:
        self.completed = completed if completed is not None else self.completed + advance
        self.loss = loss if loss is not None else self.loss
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, loss=self.loss)
        elif time.monotonic() - self._last_line >= self._every:
            self._line()

    def stop(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._bar is not None:
            self._bar.stop()
        else:
            self._line()

    def _line(self) -> None:
        self._last_line = now = time.monotonic()
        loss = f", loss {self.loss}" if self.with_loss else ""
        print(f"[{now - self._t0:7.1f}s] {self.label}: {self.completed}/{self.total}{loss}", file=sys.stderr,
              flush=True)
