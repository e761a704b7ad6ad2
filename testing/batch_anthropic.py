"""Anthropic's Message Batches API on the test server (see `batches.py`)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from .batch_state import CUSTOM_ID, Batch, BatchStore, iso, json_response
from .payloads import ANTHROPIC, error_object


class AnthropicBatches(BatchStore):
    # ---- Anthropic message batches --------------------------------------------------------------

    async def anthropic_create(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, ANTHROPIC)) is not None:
            return denied
        raw = await request.read()
        cap = self.server.config.batch_max_bytes
        if cap is not None and len(raw) > cap:  # Anthropic's front door refuses it before the API sees it
            return json_response(error_object(ANTHROPIC, 413, "Request exceeds the maximum allowed number of bytes."),
                                 413)
        body = orjson.loads(raw)
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs:
            return json_response(error_object(ANTHROPIC, 400, "requests: must be a non-empty list"), 400)
        seen: set[str] = set()
        requests = []
        for i, r in enumerate(reqs):
            cid = r.get("custom_id") if isinstance(r, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.match(cid) or cid in seen or not isinstance(
                    r.get("params"), dict):
                return json_response(error_object(ANTHROPIC, 400, f"requests[{i}]: custom_id must be unique and match "
                                                          f"{CUSTOM_ID.pattern}, params an object"), 400)
            seen.add(cid)
            requests.append((cid, r["params"]))
        batch = self._new_batch(ANTHROPIC, requests)
        batch.validating_s = 0.0  # Anthropic has no separate validation phase
        await self._hang_if_asked()
        return json_response(self._anthropic_view(batch))

    def _anthropic_view(self, batch: Batch) -> dict[str, Any]:
        status, since, done = batch.phase(time.time())
        ended = status in ("completed", "expired", "cancelled", "failed")
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            results = self._finish(batch, done)
            counts["succeeded"] = sum(1 for r in results.values() if r[0] == "ok")
            counts["errored"] = len(results) - counts["succeeded"]
            left = len(batch.requests) - len(results)
            counts["canceled" if status == "cancelled" else "expired"] = left
        else:
            counts["processing"] = len(batch.requests)
        processing = "ended" if ended else ("canceling" if status == "cancelling" else "in_progress")
        url = f"{self.server.url}/v1/messages/batches/{batch.id}/results" if ended else None
        return {
            "id": batch.id, "type": "message_batch", "processing_status": processing, "request_counts": counts,
            "ended_at": iso(since) if ended else None, "created_at": iso(batch.created),
            "expires_at": iso(batch.created + 86400), "archived_at": None,
            "cancel_initiated_at": iso(batch.cancelled_at), "results_url": url,
        }

    async def anthropic_retrieve(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, ANTHROPIC)) is not None:
            return denied
        batch = self._get(request, ANTHROPIC)
        return batch if isinstance(batch, web.Response) else json_response(self._anthropic_view(batch))

    async def anthropic_results(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, ANTHROPIC)) is not None:
            return denied
        batch = self._get(request, ANTHROPIC)
        if isinstance(batch, web.Response):
            return batch
        view = self._anthropic_view(batch)
        if view["processing_status"] != "ended":
            return json_response(error_object(ANTHROPIC, 404, "the batch has not ended; no results yet"), 404)
        results = batch.results or {}
        lines = []
        for custom_id, _ in batch.requests:
            res = results.get(custom_id)
            if res is None:
                result: dict[str, Any] = {"type": "canceled" if batch.cancelled_at is not None else "expired"}
            elif res[0] == "ok":
                result = {"type": "succeeded", "message": res[1]}
            else:
                result = {"type": "errored", "error": res[2]}
            lines.append(orjson.dumps({"custom_id": custom_id, "result": result}))
        self.server.rng.shuffle(lines)  # "results are not guaranteed to be in the same order as requests"
        return web.Response(body=b"\n".join(lines) + b"\n", headers={"Content-Type": "application/binary"})

    async def anthropic_cancel(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, ANTHROPIC)) is not None:
            return denied
        batch = self._get(request, ANTHROPIC)
        if isinstance(batch, web.Response):
            return batch
        if batch.phase(time.time())[0] in ("validating", "in_progress", "finalizing"):
            batch.cancelled_at = time.time()
        return json_response(self._anthropic_view(batch))

    async def anthropic_list(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, ANTHROPIC)) is not None:
            return denied
        data = [self._anthropic_view(b) for b in reversed(list(self.batches.values())) if b.proto == ANTHROPIC]
        limit = int(request.query.get("limit", "20"))
        ids = [d["id"] for d in data]
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if after is not None:  # newest first: the page of older ones after this one
            data = data[ids.index(after) + 1:] if after in ids else []
        elif before is not None:  # the page of newer ones just before it
            data = data[:ids.index(before)][-limit:] if before in ids else []
        page = data[:limit]
        return json_response({"data": page, "has_more": len(data) > limit,
                      "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})
