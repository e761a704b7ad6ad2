"""The ledger's part for provider batches and pacing changes: which queries sit in which batch
(a batch outlives the process, so a resume polls it instead of counting its queries lost), each
open batch's state, and the last pacing change per model. A mixin of `Ledger`, folded through the
same handler table."""

from __future__ import annotations

from typing import Any

from .events import pauses_of


class BatchFold:
    queries: dict[str, Any]
    batched: dict[str, str]  # query id -> batch key
    batches: dict[str, dict[str, Any]]
    batch_ids: set[str]
    pacing: dict[str, dict[str, Any]]
    counts: dict[str, int]

    def _violate(self, seq: int, message: str) -> None:  # the Ledger's
        raise NotImplementedError

    def _on_batch_prepared(self, seq: int, p: dict[str, Any]) -> None:
        for qid in p["query_ids"]:
            q = self.queries.get(qid)
            if q is None or not q.holding:
                self._violate(seq, f"query {qid} put in batch {p['key']} without a reservation")
            self.batched[qid] = p["key"]
        lines = p.get("lines") or {}
        requests = len(p["query_ids"]) - sum(len(qids) - 1 for qids in lines.values())  # as the provider counts
        self.batches[p["key"]] = {"status": "preparing", "requests": requests, "counts": {},
                                  "model": p.get("model", ""), "provider": p.get("provider", ""),
                                  "at": p.get("at", 0.0), "batch_id": None, "input_file_id": None,
                                  "lines": dict(lines)}

    def _on_batch_submitted(self, seq: int, p: dict[str, Any]) -> None:
        self.batch_ids.add(p["batch_id"])
        b = self.batches.get(p["key"])
        if b is not None:
            b.update(status="submitted", batch_id=p["batch_id"])
            if p.get("input_file_id"):
                b["input_file_id"] = p["input_file_id"]

    def _on_batch_status(self, seq: int, p: dict[str, Any]) -> None:
        b = self.batches.get(p["key"])
        if b is not None:
            b.update(status=p["status"], counts=dict(p.get("counts") or {}))
            if p.get("input_file_id"):
                b["input_file_id"] = p["input_file_id"]

    def _on_batch_finished(self, seq: int, p: dict[str, Any]) -> None:
        self.batches.pop(p["key"], None)
        for qid in [q for q, k in self.batched.items() if k == p["key"]]:
            self._violate(seq, f"batch {p['key']} finished with query {qid} still in it")
            del self.batched[qid]

    def _on_rate_adjusted(self, seq: int, p: dict[str, Any]) -> None:
        self.pacing[p["model"]] = {k: p.get(k) for k in ("note", "rpm", "tpm", "factor", "pause_s")}
        n = pauses_of(p)
        if n:
            self.counts["pauses"] = self.counts.get("pauses", 0) + n
