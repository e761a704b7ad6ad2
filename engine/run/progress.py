"""What a user watches while a run works: a live rich display on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..ledger.ledger import Ledger


def _budget_axis(ledger: Ledger) -> tuple[str, float, float]:
    """The limit nearest to running out decides what the bar shows."""
    spent = ledger.total_spent()
    best = ("queries", float(spent.queries), 0.0)
    frac = -1.0
    for dim in ("queries", "input_tokens", "output_tokens", "usd"):
        limit = getattr(ledger.spec.total, dim)
        if limit:
            f = getattr(spent, dim) / limit
            if f > frac:
                frac, best = f, (dim, float(getattr(spent, dim)), float(limit))
    return best


class RunProgress:
    def __init__(self, ledger: Ledger, label: str, enabled: bool = True, console: Console | None = None) -> None:
        self.ledger = ledger
        self.label = label
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.enabled = enabled
        self._t0 = time.monotonic()
        self._last_log = 0.0
        self._rate_window: list[tuple[float, int]] = []
        self._progress: Progress | None = None
        self._task: Any = None
        self.last_error: tuple[float, str] | None = None  # (when, what): the latest failure of any kind
        self.warnings: list[str] = []

    def on_event(self, seq: int, type_: str, payload: dict[str, Any]) -> None:
        """Fed every event the run records: keeps the latest error for the live view, and says a
        run warning once, on the terminal or in the log, whether or not progress is shown."""
        error = _error_of(type_, payload)
        if error is not None:
            self.last_error = (time.monotonic(), error)
        elif type_ == "run_warning":
            self.warnings.append(payload["message"])
            from rich.markup import escape

            self.console.print(f"[yellow]warning:[/yellow] {escape(payload['message'])}", highlight=False,
                               soft_wrap=True)

    def __enter__(self) -> "RunProgress":
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, refresh_per_second=4)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=None, stats="")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.update(force=True)
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def stats_line(self) -> str:
        led = self.ledger
        c = led.counts
        spent = led.total_spent()
        now = time.monotonic()
        self._rate_window.append((now, c["settled"]))
        while len(self._rate_window) > 2 and now - self._rate_window[0][0] > 10:
            self._rate_window.pop(0)
        t0, s0 = self._rate_window[0]
        rate = (c["settled"] - s0) / (now - t0) if now > t0 else 0.0
        line = (f"tok {spent.input_tokens}/{spent.output_tokens} ${spent.usd:.4f} | {rate:.1f} req/s | "
                f"429s {c['rate_limited']} | retries {c['retries']} | in flight {led.in_flight}")
        line += batch_line(led) + pacing_line(led)
        if self.last_error is not None:
            when, what = self.last_error
            line += f" | last error {now - when:.0f}s ago: {what}"
        return line

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        dim, done, total = _budget_axis(self.ledger)
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total or None,
                                  description=f"{self.label} ({dim})", stats=self.stats_line())
            return
        now = time.monotonic()
        if force or now - self._last_log >= 5.0:
            self._last_log = now
            shown = f"{done:g}/{total:g}" if total else f"{done:g}"
            print(f"[{now - self._t0:7.1f}s] {self.label}: {dim} {shown} | {self.stats_line()}",
                  file=sys.stderr, flush=True)


def batch_line(ledger: Ledger) -> str:
    """Open provider batches by state, with their progress: ` | batches: in_progress 1200/2000`."""
    if not ledger.batches:
        return ""
    parts = []
    for b in ledger.batches.values():
        counts = b.get("counts") or {}
        done = counts.get("completed", counts.get("succeeded", 0)) + counts.get("failed", counts.get("errored", 0))
        parts.append(f"{b['status']} {done}/{b['requests']}")
    return " | batches: " + ", ".join(parts[:4]) + (f" (+{len(parts) - 4})" if len(parts) > 4 else "")


def pacing_line(ledger: Ledger) -> str:
    """The last pacing change that is still in effect (a slower pace, a pause), if any."""
    notes = [p for p in ledger.pacing.values() if (p.get("factor") or 1.0) < 1.0 or p.get("pause_s")]
    return f" | pace: {notes[-1]['note']}" if notes else ""


def _error_of(type_: str, payload: dict[str, Any]) -> str | None:
    """A short line for an event that reports a failure, else None."""
    if type_ == "attempt_failed":
        text = payload.get("message") or payload.get("kind", "")
    elif type_ == "query_abandoned":
        text = f"query abandoned: {payload.get('reason', '')}"
    elif type_ == "sample_rejected" and payload.get("stage") == "failed":
        text = payload.get("reason", "")
    else:
        return None
    text = " ".join(str(text).split())
    return text if len(text) <= 90 else text[:87] + "..."
