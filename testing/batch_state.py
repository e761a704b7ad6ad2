"""The state every batch shares, in both APIs: a batch's clock-driven life and its results."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web

from .payloads import OPENAI, error_object
from .replies import RequestInvalid

JSON_TYPE = "application/json"
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ENDPOINTS = ("/v1/chat/completions",)


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), headers={"Content-Type": JSON_TYPE})


@dataclass
class Batch:
    id: str
    proto: str
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, request body)
    created: float
    validating_s: float
    request_s: float
    finalizing_s: float
    expire_s: float | None
    input_file_id: str | None = None
    metadata: dict[str, Any] | None = None
    invalid: list[dict[str, Any]] = field(default_factory=list)
    cancelled_at: float | None = None
    results: dict[str, Any] | None = None  # made once at the end
    output_file_id: str | None = None
    error_file_id: str | None = None
    prompt_tokens: int = 0  # what it holds of an enqueued token limit while it has not ended

    @property
    def started(self) -> float:
        return self.created + self.validating_s

    def processed_by(self, t: float) -> int:
        if t <= self.started or self.invalid:
            return 0
        if self.request_s <= 0:
            return len(self.requests)
        return min(len(self.requests), int((t - self.started) / self.request_s))

    def phase(self, now: float) -> tuple[str, float | None, int]:
        """(status, when that status began, requests processed) in OpenAI's vocabulary."""
        n = len(self.requests)
        if self.invalid:
            return ("validating", self.created, 0) if now < self.started else ("failed", self.started, 0)
        expiry = self.created + self.expire_s if self.expire_s is not None else None
        if self.cancelled_at is not None and (expiry is None or self.cancelled_at < expiry):
            done = self.processed_by(self.cancelled_at)
            if done < n:
                end = self.cancelled_at + self.finalizing_s
                return ("cancelling", self.cancelled_at, done) if now < end else ("cancelled", end, done)
        finished = self.started + n * self.request_s
        if expiry is not None and finished + self.finalizing_s > expiry and now >= expiry:
            return "expired", expiry, self.processed_by(expiry)
        if now < self.started:
            return "validating", self.created, 0
        if now < finished:
            return "in_progress", self.started, self.processed_by(now)
        if now < finished + self.finalizing_s:
            return "finalizing", finished, n
        return "completed", finished + self.finalizing_s, n


class BatchStore:
    """Batches and files of one TeacherServer; the two APIs are views of it."""

    def __init__(self, server: Any) -> None:  # the app.TeacherServer they belong to
        self.server = server
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, Batch] = {}

    # ---- shared ---------------------------------------------------------------------------------

    def _denied(self, request: web.Request, proto: str) -> web.Response | None:
        srv = self.server
        key = srv.config.require_api_key
        if key is not None and srv.api_key(request, proto) != key:
            return json_response(error_object(proto, 401, "Incorrect API key provided."), 401)
        return None

    def _new_batch(self, proto: str, requests: list[tuple[str, dict[str, Any]]], **kw: Any) -> Batch:
        cfg = self.server.config
        prefix = "batch_" if proto == OPENAI else "msgbatch_"
        batch = Batch(prefix + secrets.token_hex(12), proto, requests, time.time(), cfg.batch_validating_s,
                      cfg.batch_request_s, cfg.batch_finalizing_s, cfg.batch_expire_s, **kw)
        if cfg.batch_fail:
            batch.invalid.append({"code": "invalid_request", "message": "the batch was refused (batch_fail)",
                                  "param": None, "line": None})
        self.batches[batch.id] = batch
        self.server.stats_obj.batches += 1
        return batch

    async def _hang_if_asked(self) -> None:
        """The batch just created gets no reply when it is the one `batch_create_hang` names."""
        if self.server.config.batch_create_hang == len(self.batches):
            await asyncio.sleep(3600)

    def _finish(self, batch: Batch, done: int) -> dict[str, Any]:
        """custom_id -> ("ok", body) | ("error", status, error body), for the first `done` requests."""
        if batch.results is None:
            out: dict[str, Any] = {}
            rng = self.server.rng
            rate = self.server.config.batch_error_rate
            for custom_id, body in batch.requests[:done]:
                if rate and rng.random() < rate:
                    out[custom_id] = ("error", 500, error_object(batch.proto, 500, "The server had an error."))
                    continue
                try:
                    payload = self.server.batch_reply(batch.proto, body)
                except RequestInvalid as exc:
                    out[custom_id] = ("error", 400, error_object(batch.proto, 400, f"invalid request: {exc}"))
                    continue
                out[custom_id] = ("ok", payload)
            batch.results = out
        return batch.results

    def _get(self, request: web.Request, proto: str) -> Batch | web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None or batch.proto != proto:
            return json_response(error_object(proto, 404, f"No batch found with id '{request.match_info['id']}'."), 404)
        return batch

