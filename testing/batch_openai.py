"""OpenAI's Files and Batch APIs on the test server (see `batches.py`)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from .batch_state import ENDPOINTS, Batch, BatchStore, json_response
from .payloads import OPENAI, error_object
from .replies import RequestInvalid, parse_openai, prompt_tokens


class OpenAIBatches(BatchStore):
    # ---- OpenAI files ---------------------------------------------------------------------------

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = "file-" + secrets.token_hex(12)
        info = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed", "status_details": None,
                "expires_at": None}
        self.files[fid] = info
        self.contents[fid] = data
        return info

    async def upload(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, OPENAI)) is not None:
            return denied
        data, filename, purpose = b"", "upload", None
        reader = await request.multipart()
        async for part in reader:
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or filename
                data = bytes(await part.read())
        if purpose is None:
            return json_response(error_object(OPENAI, 400, "purpose: field required"), 400)
        cap = self.server.config.batch_max_bytes
        if purpose == "batch" and cap is not None and len(data) > cap:
            return json_response(error_object(OPENAI, 400, "File is too large."), 400)
        return json_response(self.add_file(data, filename, purpose))

    async def file_info(self, request: web.Request) -> web.Response:
        info = self.files.get(request.match_info["id"])
        if info is None:
            return json_response(error_object(OPENAI, 404, "No such File object"), 404)
        return json_response(info)

    async def file_content(self, request: web.Request) -> web.Response:
        data = self.contents.get(request.match_info["id"])
        if data is None:
            return json_response(error_object(OPENAI, 404, "No such File object"), 404)
        return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})

    async def file_delete(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        found = self.files.pop(fid, None) is not None
        self.contents.pop(fid, None)
        return json_response({"id": fid, "object": "file", "deleted": found}, 200 if found else 404)

    # ---- OpenAI batches -------------------------------------------------------------------------

    def _parse_input(self, data: bytes, endpoint: str) -> tuple[list[tuple[str, dict[str, Any]]], list[dict], int]:
        """The file's valid requests, its errors, and the requests' prompt tokens (for `_enqueue`)."""
        requests: list[tuple[str, dict[str, Any]]] = []
        errors: list[dict[str, Any]] = []
        tokens = 0
        seen: set[str] = set()
        for line_no, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                custom_id = row["custom_id"]
                if not isinstance(custom_id, str) or custom_id in seen:
                    raise RequestInvalid(f"custom_id {custom_id!r} is missing or not unique")
                if row.get("method") != "POST" or row.get("url") != endpoint:
                    raise RequestInvalid(f"each line must be a POST to {endpoint}")
                tokens += prompt_tokens(parse_openai(row["body"]).texts)
                seen.add(custom_id)
                requests.append((custom_id, row["body"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, RequestInvalid) as exc:
                errors.append({"code": "invalid_request", "message": str(exc), "param": None, "line": line_no})
        if not requests and not errors:
            errors.append({"code": "empty_file", "message": "the input file has no requests", "param": None,
                           "line": None})
        return requests, errors, tokens

    async def openai_create(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, OPENAI)) is not None:
            return denied
        body = orjson.loads(await request.read())
        fid, endpoint = body.get("input_file_id"), body.get("endpoint")
        if fid not in self.contents:
            return json_response(error_object(OPENAI, 400, f"input_file_id: no such file {fid!r}"), 400)
        if endpoint not in ENDPOINTS or body.get("completion_window") != "24h":
            return json_response(error_object(OPENAI, 400, "endpoint must be /v1/chat/completions and "
                                                   "completion_window 24h"), 400)
        requests, errors, tokens = self._parse_input(self.contents[fid], endpoint)
        batch = self._new_batch(OPENAI, requests, input_file_id=fid, metadata=body.get("metadata"),
                                prompt_tokens=tokens)
        batch.invalid.extend(errors)
        self._enqueue(batch)
        await self._hang_if_asked()
        return json_response(self._openai_view(batch))

    def _enqueue(self, batch: Batch) -> None:
        """OpenAI's enqueued token limit: the batch is created, then fails at validation when its
        prompt tokens and those of the model's batches still running would go over it."""
        limit = self.server.config.batch_enqueued_tokens
        if limit is None or batch.invalid or not batch.requests:
            return
        model, now = batch.requests[0][1].get("model"), time.time()
        running = sum(b.prompt_tokens for b in self.batches.values()
                      if b is not batch and b.proto == OPENAI and b.requests and b.requests[0][1].get("model") == model
                      and b.phase(now)[0] in ("validating", "in_progress", "finalizing"))
        if running + batch.prompt_tokens > limit:
            batch.invalid.append({"code": "token_limit_exceeded", "param": None, "line": None, "message": (
                f"Enqueued token limit reached for {model} in organization org-test. Limit: {limit:,} enqueued "
                "tokens. Please try again once some in_progress batches have been completed.")})

    def _openai_files(self, batch: Batch, done: int) -> None:
        if batch.output_file_id is not None or batch.error_file_id is not None:
            return
        results = self._finish(batch, done)
        out, err = [], []
        for i, (custom_id, _) in enumerate(batch.requests):
            rid = f"batch_req_{batch.id[-8:]}_{i}"
            res = results.get(custom_id)
            if res is None:
                if batch.cancelled_at is None:  # expired before it ran
                    err.append({"id": rid, "custom_id": custom_id, "response": None, "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired."}})
                continue
            if res[0] == "ok":
                out.append({"id": rid, "custom_id": custom_id, "error": None,
                            "response": {"status_code": 200, "request_id": rid, "body": res[1]}})
            else:
                err.append({"id": rid, "custom_id": custom_id, "error": None,
                            "response": {"status_code": res[1], "request_id": rid, "body": res[2]}})
        if out:
            lines = [orjson.dumps(x) for x in out]
            cut = self.server.config.batch_cut_lines
            for i in range(max(0, len(lines) - cut), len(lines)):
                lines[i] = lines[i][: len(lines[i]) // 2]
            batch.output_file_id = self.add_file(b"\n".join(lines) + b"\n", "batch_output.jsonl", "batch_output")["id"]
        if err:
            batch.error_file_id = self.add_file(b"\n".join(map(orjson.dumps, err)) + b"\n",
                                                "batch_errors.jsonl", "batch_output")["id"]

    def _openai_view(self, batch: Batch) -> dict[str, Any]:
        status, since, done = batch.phase(time.time())
        ended = status in ("completed", "expired", "cancelled")
        if ended:
            self._openai_files(batch, done)
        results = batch.results or {}
        failed = sum(1 for r in results.values() if r[0] == "error")
        stamp = int(since) if since is not None else None
        return {
            "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions",
            "errors": {"object": "list", "data": batch.invalid} if batch.invalid else None,
            "input_file_id": batch.input_file_id, "completion_window": "24h", "status": status,
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "created_at": int(batch.created),
            "in_progress_at": int(batch.started) if status not in ("validating", "failed") else None,
            "expires_at": int(batch.created + 86400),
            "finalizing_at": stamp if status == "finalizing" else None,
            "completed_at": stamp if status == "completed" else None,
            "failed_at": stamp if status == "failed" else None,
            "expired_at": stamp if status == "expired" else None,
            "cancelling_at": int(batch.cancelled_at) if batch.cancelled_at is not None else None,
            "cancelled_at": stamp if status == "cancelled" else None,
            "request_counts": {"total": len(batch.requests), "completed": (done - failed) if ended else done,
                               "failed": failed},
            "metadata": batch.metadata,
        }

    async def openai_retrieve(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, OPENAI)) is not None:
            return denied
        batch = self._get(request, OPENAI)
        return batch if isinstance(batch, web.Response) else json_response(self._openai_view(batch))

    async def openai_cancel(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, OPENAI)) is not None:
            return denied
        batch = self._get(request, OPENAI)
        if isinstance(batch, web.Response):
            return batch
        status = batch.phase(time.time())[0]
        if status not in ("validating", "in_progress", "finalizing"):
            return json_response(error_object(OPENAI, 409, f"Cannot cancel a batch with status {status}."), 409)
        batch.cancelled_at = time.time()
        return json_response(self._openai_view(batch))

    async def openai_list(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, OPENAI)) is not None:
            return denied
        data = [self._openai_view(b) for b in reversed(list(self.batches.values())) if b.proto == OPENAI]
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after")
        if after is not None:
            ids = [d["id"] for d in data]
            data = data[ids.index(after) + 1:] if after in ids else []
        page = data[:limit]
        return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                      "last_id": page[-1]["id"] if page else None, "has_more": len(data) > limit})

