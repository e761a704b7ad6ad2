"""The test teacher server's own controls: counters, settings changed while it runs, a stats file,
and the HTTP endpoints for them (`/stats`, `/control`, `/reset`, `/v1/models`)."""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .payloads import OPENAI, PromptCache
from .replies import AnswerBook
from .serverconfig import CONTROLLABLE, ServerConfig, Stats

_JSON = "application/json"


class ServerControl:
    """Mixed into TeacherServer (which owns the attributes used here)."""

    config: ServerConfig
    stats_file: Path | None
    url: str
    _stats: Stats
    _in_flight: int
    _granted: int
    _limiter: Any
    _batches: Any
    _book: AnswerBook
    _cache: PromptCache
    _rng: random.Random
    _latency_rng: random.Random
    _unhung: asyncio.Event

    # call on the server's loop

    @property
    def stats_obj(self) -> Stats:
        return self._stats

    @property
    def rng(self) -> random.Random:
        return self._rng

    def stats(self, log: bool = False) -> dict[str, Any]:
        out = self._stats.as_dict(log)
        out["in_flight"] = self._in_flight
        return out

    def control(self, **changes: Any) -> dict[str, Any]:
        unknown = sorted(set(changes) - CONTROLLABLE)
        if unknown:
            allowed = ", ".join(sorted(CONTROLLABLE))
            raise ValueError(f"unknown server setting(s): {', '.join(unknown)} (allowed: {allowed})")
        if "error_codes" in changes:
            changes["error_codes"] = tuple(changes["error_codes"])
        self.config = replace(self.config, **changes)  # re-validates
        cfg = self.config
        if {"rpm", "tpm", "window_s", "rate_headers"} & changes.keys():
            self._limiter.configure(cfg.rpm, cfg.tpm, cfg.window_s, cfg.rate_headers)
        if {"itpm", "otpm", "window_s"} & changes.keys():
            self._split.configure(cfg.itpm, cfg.otpm, cfg.window_s)
        if "cache_min_tokens" in changes:
            self._cache = PromptCache(cfg.cache_min_tokens)
        if "answers" in changes:
            self._book = AnswerBook(cfg.answers)
        if "seed" in changes:
            self._rng = random.Random(cfg.seed)
            self._latency_rng = random.Random(cfg.seed + 1)
        if cfg.hang:
            self._unhung.clear()
        else:
            self._unhung.set()
        return self.settings()

    def settings(self) -> dict[str, Any]:
        """The current configuration, with `answers` reduced to its size."""
        d = {f.name: getattr(self.config, f.name) for f in fields(self.config)}
        d["answers"] = len(self.config.answers or {})
        return d

    def reset(self) -> None:
        """Zero the counters and log, and empty the rate-limit window and the max_requests count."""
        self._stats.zero()
        self._limiter.reset()
        self._batches.reset()
        self._granted = 0

    def write_stats_file(self) -> None:
        if not self.stats_file:
            return
        tmp = self.stats_file.with_name(self.stats_file.name + ".tmp")
        data = self.stats(log=True)
        data["url"] = self.url
        tmp.write_bytes(orjson.dumps(data))
        os.replace(tmp, self.stats_file)  # readers never see a half-written file

    async def _write_periodically(self) -> None:
        last = None
        while True:
            snapshot = (tuple(self.stats().values()), len(self._stats.log))
            if snapshot != last:
                self.write_stats_file()
                last = snapshot
            await asyncio.sleep(0.5)

    # ---- HTTP endpoints ---------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        key = self.config.require_api_key
        if key is not None and self.api_key(request, OPENAI) != key:
            return self._error(OPENAI, 401, "Incorrect API key provided.")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "synthledger"} for m in self.config.models]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), headers={"Content-Type": _JSON})

    async def _get_stats(self, request: web.Request) -> web.Response:
        log = request.query.get("log", "0") not in ("0", "", "false")
        data = self.stats(log=log)
        data["settings"] = self.settings()
        return web.Response(body=orjson.dumps(data), headers={"Content-Type": _JSON})

    async def _post_control(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object of settings")
            return web.Response(body=orjson.dumps(self.control(**changes)), headers={"Content-Type": _JSON})
        except (ValueError, TypeError) as exc:
            return web.Response(status=400, body=orjson.dumps({"error": str(exc)}), headers={"Content-Type": _JSON})

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(body=orjson.dumps(self.stats()), headers={"Content-Type": _JSON})
