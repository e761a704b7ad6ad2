"""What `audit` says about requests that carried several queries, provider batches and pacing.

k samples asked as one `n=k` request are k queries in the ledger, each settled at a share of the
request's usage; every share records the whole request's usage too, so the audit can put them
back together and check that the shares add up exactly. Batches and pacing changes (pauses,
learned limits) are summarised so a user sees how the run's queries actually went out.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from .ledger import Violation
from .events import BatchFinished, BatchPrepared, QuerySettled, RateAdjusted, pauses_of


class SharingAudit:
    """Fed every event's (seq, type, payload); `violations` and `summary()` at the end."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self._open: dict[str, list[int]] = {}  # request -> [n, in, out, in_total, out_total, seen]
        self.requests = self.queries = self.input_tokens = self.output_tokens = 0
        self.batches = 0
        self.batch_queries = 0
        self.batch_ends: Counter[str] = Counter()
        self.batch_failed = 0
        self.notes: list[str] = []
        self.pauses = 0

    def feed(self, seq: int, type_: str, p: dict[str, Any]) -> None:
        handle = _HANDLERS.get(type_)
        if handle is not None:
            handle(self, seq, p)

    def _settled(self, seq: int, p: dict[str, Any]) -> None:
        if p.get("shared"):
            self._share(seq, p)

    def _batch_prepared(self, seq: int, p: dict[str, Any]) -> None:
        self.batches += 1
        self.batch_queries += len(p.get("query_ids", []))

    def _batch_finished(self, seq: int, p: dict[str, Any]) -> None:
        self.batch_ends[p.get("status", "?")] += 1
        self.batch_failed += int(p.get("failed") or 0)  # (an Anthropic batch always "ended": its requests say how)

    def _rate_adjusted(self, seq: int, p: dict[str, Any]) -> None:
        self.pauses += pauses_of(p)
        if len(self.notes) < 20:
            self.notes.append(p.get("note", ""))

    def _share(self, seq: int, p: dict[str, Any]) -> None:
        sh = p["shared"]
        rid = sh["request"]  # a request's leader settles once, so its id names one successful call
        acc = self._open.get(rid)
        if acc is None:
            acc = self._open[rid] = [int(sh["n"]), 0, 0, int(sh["input_tokens"]), int(sh["output_tokens"]), 0]
        actual = p.get("actual") or {}
        acc[1] += int(actual.get("input_tokens", 0))
        acc[2] += int(actual.get("output_tokens", 0))
        acc[5] += 1
        if acc[5] < acc[0]:
            return
        del self._open[rid]
        n, ins, outs, in_total, out_total, _ = acc
        if (ins, outs) != (in_total, out_total):
            self.violations.append(Violation(seq, f"request {sh['request']}: its {n} shares add up to {ins} in / "
                                                  f"{outs} out tokens, the request used {in_total} / {out_total}"))
        self.requests += 1
        self.queries += n
        self.input_tokens += in_total
        self.output_tokens += out_total

    def summary(self) -> dict[str, Any]:
        return {
            "shared_requests": {"requests": self.requests, "queries": self.queries, "input_tokens": self.input_tokens,
                                "output_tokens": self.output_tokens,
                                "split": "prompt tokens evenly, completion tokens by answer length",
                                "incomplete": len(self._open)},
            "batches": {"batches": self.batches, "queries": self.batch_queries, "ended": dict(self.batch_ends),
                        "failed": self.batch_failed},
            "pacing": {"pauses": self.pauses, "notes": self.notes},
        }


_HANDLERS: dict[str, Callable[[SharingAudit, int, dict[str, Any]], None]] = {
    QuerySettled.TYPE: SharingAudit._settled, BatchPrepared.TYPE: SharingAudit._batch_prepared,
    BatchFinished.TYPE: SharingAudit._batch_finished, RateAdjusted.TYPE: SharingAudit._rate_adjusted,
}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary in words, for the audit's text output (nothing when none of it happened)."""
    lines = []
    sr = summary.get("shared_requests") or {}
    if sr.get("requests"):
        lines.append(f"{sr['queries']} queries went out as {sr['requests']} n-sample requests "
                     f"({sr['input_tokens']} input / {sr['output_tokens']} output tokens, split {sr['split']})")
    b = summary.get("batches") or {}
    if b.get("batches"):
        ended = ", ".join(f"{k} {v}" for k, v in sorted(b["ended"].items())) or "none ended"
        # (attempts: a request that expired or failed in one batch goes again in a later one)
        failed = (f"; {b['failed']} of the attempts failed, expired or were cancelled (retried or released)"
                  if b.get("failed") else "")
        lines.append(f"{b['queries']} query attempts went out in {b['batches']} provider batches ({ended}){failed}")
    pc = summary.get("pacing") or {}
    if pc.get("notes"):
        lines.append(f"pacing: {len(pc['notes'])} change(s), {pc['pauses']} pause(s); last: {pc['notes'][-1]}")
    return lines
