"""What a user watches while a run works: a live rich display on a terminal, log lines otherwise,
and one summary line at the end.

Progress is measured against the *binding* limit (the one nearest to running out), in its own
unit: a usd budget reads `$0.1234 of $0.5000`, not a count of queries against no total. The
projection and the ETA extrapolate that fraction; accepted and rejected samples are counted from
the events as they are written, so the user sees whether the money is buying data.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..ledger.ledger import Amount, Ledger
from ..ledger.events import AttemptFailed, QueryAbandoned, RateAdjusted, RunWarning, SampleAccepted, SampleRejected

DIMS = ("queries", "input_tokens", "output_tokens", "usd")
BAR_STEPS = 1000  # the bar's resolution; the numbers are in the text beside it
WINDOW_S = 15.0  # rates and the ETA are measured over the last this many seconds
# A rate (or an ETA) taken over less time than this is noise: a 100-query run over in 0.04 s read
# "2309.0 req/s". Under it the live line leaves rates out and the final line gives only the duration.
MIN_RATE_S = 1.0


Binding = tuple[str, str, float, "float | None"]  # (role, or "" for the total; dimension; spent; limit)


def _nearest(role: str, spent: Amount, limits: Any, best: Binding, frac: float) -> tuple[Binding, float]:
    """`best` and its spent fraction, or a limit of `limits` nearer to running out than it."""
    for dim in DIMS:
        limit = getattr(limits, dim)
        if limit is not None:
            f = getattr(spent, dim) / limit if limit > 0 else 1.0  # (0: a run that asks nothing, all spent)
            if f > frac:
                frac, best = f, (role, dim, float(getattr(spent, dim)), float(limit))
    return best, frac


def binding_scope(ledger: Ledger) -> Binding:
    """The limit nearest to running out: the total's, unless a `[budget.roles.R]` limit is nearer
    (the last line said "queries 15 of 20 (75.0%)" of a run its augmenter's 3 of 3 had ended: QA);
    ("", "queries", n, None) if there is none."""
    spent = ledger.total_spent()
    best, frac = _nearest("", spent, ledger.spec.total, ("", "queries", float(spent.queries), None), -1.0)
    for role, limits in sorted(ledger.spec.roles.items()):
        best, frac = _nearest(role, ledger.spent.get(f"role:{role}") or Amount(), limits, best, frac)
    return best


def limit_words(role: str, dim: str, done: float, limit: float) -> str:
    """`augmenter queries 3 of 3`, `usd $0.1234 of $0.5000`."""
    return f"{f'{role} ' if role else ''}{dim} {_amount(dim, done)} of {_amount(dim, limit)}"


def _amount(dim: str, v: float) -> str:
    if dim == "usd":
        return f"${v:.4f}"
    if v >= 100_000:
        return f"{v / 1000:.0f}k"
    return f"{v:.0f}"


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class RunProgress:
    def __init__(self, ledger: Ledger, label: str, enabled: bool = True, console: Console | None = None,
                 *, accepted: int = 0, rejected: int = 0) -> None:
        self.ledger = ledger
        self.label = label
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.enabled = enabled
        self.accepted = accepted
        self.rejected = rejected
        self.unchecked = 0
        self._t0 = time.monotonic()
        self._settled0 = ledger.counts["settled"]  # settled by earlier sessions (a resume): not this one's rate
        self._last_log = 0.0
        self._window: list[tuple[float, int, float, int]] = []  # (t, settled, fraction, decided)
        self._progress: Progress | None = None
        self._task: Any = None
        self.last_error: tuple[float, str] | None = None  # (when, what): the latest failure of any kind
        self.warnings: list[str] = []
        self._paused_until: dict[str, float] = {}  # model -> when the last pause this session saw ends

    # ---- inputs --------------------------------------------------------------------------
    # What `on_event` reads: the journal hands it these types only.
    EVENTS = frozenset({SampleAccepted.TYPE, SampleRejected.TYPE, RateAdjusted.TYPE, RunWarning.TYPE,
                        AttemptFailed.TYPE, QueryAbandoned.TYPE})

    def on_event(self, seq: int, type_: str, payload: dict[str, Any]) -> None:
        """Fed every event the run records: counts samples, keeps the latest error for the live
        view, and says a run warning once, on the terminal or in the log, whether or not progress is shown."""
        if type_ == SampleAccepted.TYPE:
            self.accepted += 1
            self.unchecked += bool((payload.get("details") or {}).get("unchecked"))
        elif type_ == SampleRejected.TYPE:
            self.rejected += 1
        if type_ == RateAdjusted.TYPE and payload.get("pause_s"):
            self._paused_until[payload["model"]] = time.monotonic() + payload["pause_s"]
        error = _error_of(type_, payload)
        if error is not None:
            self.last_error = (time.monotonic(), error)
        elif type_ == RunWarning.TYPE:
            self.warnings.append(payload["message"])
            from rich.markup import escape

            self.console.print(f"[yellow]warning:[/yellow] {escape(payload['message'])}", highlight=False,
                               soft_wrap=True)

    # ---- what is shown -----------------------------------------------------------------
    def _rates(self, fraction: float) -> tuple[float | None, float | None, float | None]:
        """(settled queries/s, accepted samples/min, seconds to the limit) over the recent window;
        all None while it spans less than MIN_RATE_S. (Accepted: counting rejected ones too, a run
        rejecting everything read "108 samples/min".)"""
        now = time.monotonic()
        accepted = self.accepted
        self._window.append((now, self.ledger.counts["settled"], fraction, accepted))
        while len(self._window) > 2 and now - self._window[0][0] > WINDOW_S:
            self._window.pop(0)
        t0, s0, f0, a0 = self._window[0]
        dt = now - t0
        if dt < MIN_RATE_S:
            return None, None, None
        speed = (fraction - f0) / dt
        eta = (1.0 - fraction) / speed if speed > 0 and fraction < 1 else None
        return (self.ledger.counts["settled"] - s0) / dt, 60 * (accepted - a0) / dt, eta

    def budget_text(self, projection: bool = True) -> tuple[str, float]:
        """`usd $0.1234 of $0.5000 (24.7%), projected $0.4990` and the binding fraction (a role's
        limit named: `augmenter queries 3 of 3 (100.0%)`)."""
        role, dim, done, limit = binding_scope(self.ledger)
        if limit is None:
            return f"{dim} {_amount(dim, done)} (no limit)", 0.0
        if limit <= 0:  # a run that asks nothing (an experiment's seeds-only cell)
            return limit_words(role, dim, done, limit), 1.0
        frac = min(1.0, done / limit)  # (the bar's fraction; the words say what was spent, even past it)
        text = f"{limit_words(role, dim, done, limit)} ({100 * done / limit:.1f}%)"
        if role:  # (a role's share: the total's dollars are no projection of it)
            return text, frac
        usd = self.ledger.total_spent().usd
        if projection and usd > 0 and frac > 0:
            projected = usd / frac
            cap = self.ledger.spec.total.usd
            text += f", projected ${min(projected, cap) if cap else projected:.4f}"
        elif dim != "usd":
            text += f", ${usd:.4f}"
        return text, frac

    def samples_text(self) -> str:
        unchecked = f" ({self.unchecked} unchecked)" if self.unchecked else ""  # (of the accepted ones)
        return f"accepted {self.accepted}{unchecked}, rejected {self.rejected}"

    def stats_line(self) -> str:
        budget, frac = self.budget_text()
        rate, per_min, eta = self._rates(frac)
        led = self.ledger
        c = led.counts
        spent = led.total_spent()
        eta_text = f"ETA {_duration(eta)}" if eta is not None else "ETA -"
        rates = f"{rate:.1f} req/s, {per_min:.0f} accepted/min | " if rate is not None and per_min is not None else ""
        line = (f"{budget} | {self.samples_text()} | {rates}{eta_text} | "
                f"tok {spent.input_tokens}/{spent.output_tokens} | 429s {c['rate_limited']} | "
                f"retries {c['retries']} | in flight {led.in_flight}")
        line += batch_line(led) + pacing_line(led, self._paused_until)
        if self.last_error is not None:
            when, what = self.last_error
            line += f" | last error {time.monotonic() - when:.0f}s ago: {what}"
        return line

    def summary(self, status: str, note: str = "") -> str:
        """The one line a finished run leaves: the same figures as the live view, at the end. `note`
        follows the status (`completed (the plan had no items)`): a status alone read as work done."""
        budget, _ = self.budget_text(projection=False)
        elapsed = time.monotonic() - self._t0
        spent = self.ledger.total_spent()
        took = _duration(elapsed) if elapsed >= MIN_RATE_S else f"{elapsed:.2f}s"
        settled = self.ledger.counts["settled"] - self._settled0
        rate = f" | {settled / elapsed:.1f} req/s" if elapsed >= MIN_RATE_S else ""
        # Answers reused from the store were never sent: without saying so, "0.0 req/s" beside
        # "32 queries" reads as a stalled run.
        reused = self.ledger.counts["reused"]
        queries = f"{spent.queries} quer{'y' if spent.queries == 1 else 'ies'}" + (f" ({reused} reused from the store, not paid)" if reused else "")
        return (f"{self.label}: {status}{f' ({note})' if note else ''} after {took} | {budget} | "
                f"{self.samples_text()} | {queries}, tok {spent.input_tokens}/{spent.output_tokens}{rate}")

    # ---- display -----------------------------------------------------------------------
    def __enter__(self) -> "RunProgress":
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), console=self.console, refresh_per_second=4)
            self._progress.__enter__()
            self._task = self._progress.add_task(escape(self.label), total=BAR_STEPS, stats="")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.update(force=True)
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            line = self.stats_line()
            _, frac = self.budget_text()
            self._progress.update(self._task, completed=frac * BAR_STEPS, stats=escape(line))
            return
        now = time.monotonic()
        if force or now - self._last_log >= 5.0:
            self._last_log = now
            print(f"[{now - self._t0:7.1f}s] {self.label}: {self.stats_line()}", file=sys.stderr, flush=True)


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


def pacing_line(ledger: Ledger, paused_until: dict[str, float] | None = None) -> str:
    """The last pacing change that is still in effect (a slower pace, a pause), if any.

    `paused_until` (model -> monotonic end of the pauses this session saw begin) keeps a pause from
    being shown after it ended: the ledger keeps each model's last note, so "paused 5s: ..." stayed
    on the line for the rest of the run (and came back on a resume); once over, a pause leaves only
    the slower pace it may have come with. While one lasts, the line counts down to the next send
    ("teacher paused 20s: ...; next try in 12s"): a pause can last a minute, and the note alone
    says how long it was, not how much of it is left."""
    now = time.monotonic()
    notes = []
    for model, p in ledger.pacing.items():
        factor = p.get("factor") or 1.0
        if p.get("pause_s") and paused_until is not None:
            ends = paused_until.get(model, -1.0)
            if ends > now:
                notes.append(f"{p['note']}; next try in {math.ceil(ends - now)}s")
            elif factor < 1.0:
                notes.append(f"pacing at {factor:.0%} of the limit")
        elif factor < 1.0 or p.get("pause_s"):
            notes.append(p["note"])
    return f" | pace: {notes[-1]}" if notes else ""


def _error_of(type_: str, payload: dict[str, Any]) -> str | None:
    """A short line for an event that reports a failure, else None."""
    if type_ == AttemptFailed.TYPE:
        text = payload.get("message") or payload.get("kind", "")
    elif type_ == QueryAbandoned.TYPE:
        text = f"query abandoned: {payload.get('reason', '')}"
    elif type_ == SampleRejected.TYPE and payload.get("stage") == "failed":
        text = payload.get("reason", "")
    else:
        return None
    text = " ".join(str(text).split())
    return text if len(text) <= 90 else text[:87] + "..."
