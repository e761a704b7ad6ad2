"""What a user watches while an experiment runs: the grid's cells done / running / left, what was
paid and reused, and the generating cell's own bar. Log lines when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..ledger.ledger import Amount


class GridView:
    def __init__(self, name: str, cells: list[str], enabled: bool = True, console: Console | None = None) -> None:
        self.name = name
        self.total = len(cells)
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.live_mode = enabled and self.console.is_terminal
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.running: dict[str, str] = {}  # cell -> stage
        self.paid = Amount()
        self.reused = Amount()
        self._gen: tuple[str, Any, int] | None = None  # (cell, runner, budget)
        self._live: Live | None = None
        self._t0 = time.monotonic()

    # ---- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> "GridView":
        if self.live_mode:
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def _log(self, message: str) -> None:
        if self.enabled and not self.live_mode:
            print(f"[{time.monotonic() - self._t0:7.1f}s] {self.name}: {message}", file=sys.stderr, flush=True)

    # ---- what the driver reports -------------------------------------------------------
    def skipped(self, cell: str) -> None:
        self.done.add(cell)

    def generating(self, cell: str, runner: Any, budget: int) -> None:
        self.running[cell] = "generate"
        self._gen = (cell, runner, budget)
        self._log(f"{cell}: generating (budget {budget} queries)")

    def generated(self, cell: str, paid: Amount, reused: Amount, status: str) -> None:
        self.running.pop(cell, None)
        self._gen = None
        self.paid.add(paid)
        self.reused.add(reused)
        self._log(f"{cell}: generation {status}; paid {paid.queries} queries (${paid.usd:.4f}), "
                  f"reused {reused.queries}")

    def training(self, cell: str) -> None:
        self.running[cell] = "train+eval"
        self._log(f"{cell}: training and evaluating")

    def finished(self, cell: str, accuracy: float | None) -> None:
        self.running.pop(cell, None)
        self.done.add(cell)
        self._log(f"{cell}: accuracy {accuracy if accuracy is None else round(accuracy, 4)} "
                  f"({len(self.done)}/{self.total} cells done)")

    def failed_cell(self, cell: str, reason: str) -> None:
        self.running.pop(cell, None)
        self.failed.add(cell)
        self._log(f"{cell}: failed: {reason}")

    # ---- rendering ---------------------------------------------------------------------
    def __rich__(self) -> Group:
        left = self.total - len(self.done) - len(self.failed) - len(self.running)
        head = Text.assemble((f"experiment {self.name}", "bold"),
                             f"  cells: {len(self.done)} done, {len(self.running)} running, {max(left, 0)} left"
                             + (f", {len(self.failed)} failed" if self.failed else "")
                             + f"  |  paid {self.paid.queries} queries ${self.paid.usd:.4f}"
                             + f"  |  reused {self.reused.queries}")
        parts: list[Any] = [head]
        if self._gen is not None:
            cell, runner, budget = self._gen
            ledger = getattr(runner, "ledger", None)
            spent = ledger.total_spent().queries if ledger is not None else 0
            reused = ledger.reused.queries if ledger is not None else 0
            bar = Table.grid(padding=(0, 1))
            bar.add_row(Text(f"generating {cell}"), ProgressBar(total=max(budget, 1), completed=spent, width=40),
                        Text(f"{spent}/{budget} queries ({reused} reused)"))
            parts.append(bar)
        training = sorted(c for c, stage in self.running.items() if stage != "generate")
        if training:
            parts.append(Text(f"training/evaluating: {', '.join(training[:6])}"
                              + (f" (+{len(training) - 6} more)" if len(training) > 6 else "")))
        return Group(*parts)
