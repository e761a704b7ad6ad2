"""The test teacher server's core: OpenAI chat completions, Anthropic messages, both batch APIs.

`testing/server.py` is the entry point (and re-exports everything here); settings live in
`serverconfig.py`, rate limits and their headers in `ratelimit.py`, response bodies in
`payloads.py`, the batch APIs in `batches.py`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from hashlib import blake2b
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .batches import BatchService
from .payloads import (ANTHROPIC, OPENAI, PromptCache, anthropic_message, error_body, malformed_body,
                       model_not_found, openai_completion, output_limit, too_large_message)
from .ratelimit import SlidingWindow, garbled
from .split_limits import SplitTokenLimits
from .replies import AnswerBook, Parsed, RequestInvalid, parse_anthropic, parse_openai, prompt_tokens, reply_text, shape
from .control import ServerControl
from .serverconfig import ServerConfig, Stats

_JSON = "application/json"


class TeacherServer(ServerControl):
    """The server; `await start()` binds (port 0 = ephemeral) and sets `.url`."""

    def __init__(self, config: ServerConfig | None = None, *, stats_file: str | Path | None = None) -> None:
        self.config = config or ServerConfig()
        self.stats_file = Path(stats_file) if stats_file else None
        cfg = self.config
        self._stats = Stats(cfg.log_size)
        self._limiter = SlidingWindow(cfg.rpm, cfg.tpm, cfg.window_s, cfg.rate_headers)
        self._split = SplitTokenLimits(cfg.itpm, cfg.otpm, cfg.window_s)  # Anthropic's endpoint only
        self._book = AnswerBook(cfg.answers)
        self._cache = PromptCache(cfg.cache_min_tokens)
        self._batches = BatchService(self)
        self._rng = random.Random(cfg.seed)
        self._latency_rng = random.Random(self.config.seed + 1)
        self._counter = 0
        self._granted = 0
        self._in_flight = 0
        self._closing = False
        self._unhung = asyncio.Event()
        if not self.config.hang:
            self._unhung.set()
        self._runner: web.AppRunner | None = None
        self._writer: asyncio.Task | None = None
        self.url = ""
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._get_stats)
        app.router.add_post("/control", self._post_control)
        app.router.add_post("/reset", self._post_reset)
        self._batches.routes(app)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = getattr(site, "_server", None)
        self.port = server.sockets[0].getsockname()[1] if server else self.config.port
        self.url = f"http://{self.config.host}:{self.port}"
        if self.stats_file:
            self._writer = asyncio.create_task(self._write_periodically())
        return self.url

    async def stop(self) -> None:
        self._closing = True
        self._unhung.set()  # hung handlers wake and close their connections without answering
        if self._writer:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._runner:
            await self._runner.cleanup()
            self._runner = None
        self.write_stats_file()

    async def __aenter__(self) -> "TeacherServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- HTTP handlers ---------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, OPENAI)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, ANTHROPIC)

    async def _serve(self, request: web.Request, proto: str) -> web.StreamResponse:
        st = self._stats
        st.received += 1
        self._in_flight += 1
        parsed: Parsed | None = None
        try:
            body = await request.read()
            if self.config.hang:
                st.hung += 1
                await self._unhung.wait()
            if self._closing:
                return self._drop(request, proto, "closed", None)
            cfg = self.config
            if cfg.require_basic is not None and not _basic_ok(request, cfg.require_basic):
                st.auth_failed += 1
                st.record(proto, 401, "auth_failed", None)
                return web.Response(status=401, text="401 Authorization Required",
                                    headers={"WWW-Authenticate": 'Basic realm="gateway"'})
            if cfg.require_api_key is not None and self.api_key(request, proto) != cfg.require_api_key:
                st.auth_failed += 1
                st.record(proto, 401, "auth_failed", None)
                sent = f": {self.api_key(request, proto)}" if cfg.echo_key else ""
                return self._error(proto, 401, f"Incorrect API key provided{sent}.")
            try:
                if proto == OPENAI:
                    parsed = parse_openai(orjson.loads(body))
                else:
                    version = request.headers.get("anthropic-version")
                    if version is None:
                        raise RequestInvalid("anthropic-version: header required")
                    parsed = parse_anthropic(orjson.loads(body), version)
            except (orjson.JSONDecodeError, RequestInvalid) as exc:
                st.bad_requests += 1
                st.record(proto, 400, "bad_request", None)
                return self._error(proto, 400, f"invalid request: {exc}")
            if parsed.max_tokens > cfg.max_output_tokens:
                st.bad_requests += 1
                st.record(proto, 400, "bad_request", parsed)
                return self._error(proto, 400, output_limit(proto, parsed.model, parsed.max_tokens,
                                                            cfg.max_output_tokens))
            if cfg.strict_models and parsed.model not in cfg.models:
                st.bad_requests += 1
                st.record(proto, 404, "model_not_found", parsed)
                return self._error(proto, 404, model_not_found(proto, parsed.model), kind="model_not_found")
            return await self._answer(request, proto, parsed, body)
        except asyncio.CancelledError:
            st.client_gone += 1
            st.record(proto, 0, "client_gone", parsed)
            raise
        finally:
            self._in_flight -= 1

    def _admit(self, proto: str, p: Parsed, ptoks: int) -> tuple[dict[str, str], web.Response | None]:
        """The rate-limit check: the headers to send, and the refusal (400 or 429) if any."""
        st, cfg = self._stats, self.config
        headers: dict[str, str] = {}
        if self._limiter.active:
            cost = ptoks + p.max_tokens * p.n
            limit = self._limiter.token_limit
            if limit is not None and cost > limit:
                st.bad_requests += 1
                if proto == OPENAI and cfg.rate_headers != "window":  # OpenAI says so with a 429
                    st.record(proto, 429, "bad_request", p)
                    return headers, self._error(proto, 429, too_large_message(p.model, limit, cost), kind="tokens")
                st.record(proto, 400, "bad_request", p)
                return headers, self._error(proto, 400, f"request too large: {cost} tokens > {limit} per window")
            now = time.monotonic()
            decision = self._limiter.acquire(cost, now)
            headers = decision.headers
            if proto == ANTHROPIC:  # Anthropic's own names only (the "window" style keeps both)
                anthropic = self._limiter.anthropic_headers(now)
                headers = {**headers, **anthropic} if cfg.rate_headers == "window" else anthropic
            if not decision.accepted:
                return self._rate_limited(proto, p, headers, decision.retry_after_s)
        return (garbled(headers) if cfg.garbled_headers else headers), None

    def _rate_limited(self, proto: str, p: Parsed, headers: dict[str, str],
                      wait: float) -> tuple[dict[str, str], web.Response]:
        """A 429 whose headers say the limits and when to come back (whole seconds, as OpenAI's)."""
        self._stats.rate_limited += 1
        self._stats.record(proto, 429, "rate_limited", p)
        headers = {**headers, **self._limiter.retry_headers(wait)}
        if self.config.garbled_headers:
            headers = garbled(headers)
        msg = f"Rate limit reached; retry after {wait:.3f}s."
        return headers, self._error(proto, 429, msg, headers=headers, kind="requests" if proto == OPENAI else None)

    def _admit_split(self, p: Parsed, ptoks: int) -> tuple[dict[str, str], web.Response | None, list[float] | None]:
        """Anthropic's input and output limits (beside a request limit, if any): output charged at
        max_tokens now, corrected to what was written when the reply is made (see `_success`)."""
        now = time.monotonic()
        cap = p.max_tokens * p.n
        wait = self._split.wait(ptoks, cap, now)
        if wait <= 0 and self._limiter.active:
            decision = self._limiter.acquire(0, now)  # (requests only: no combined token limit here)
            wait = 0.0 if decision.accepted else decision.retry_after_s
        charge = self._split.charge(ptoks, cap, now) if wait <= 0 else None  # (headers say what is left after it)
        headers = {**self._limiter.anthropic_headers(now), **self._split_headers(now)}
        if wait > 0:
            return (*self._rate_limited(ANTHROPIC, p, headers, wait), None)
        return (garbled(headers) if self.config.garbled_headers else headers), None, charge

    def _split_headers(self, now: float) -> dict[str, str]:
        return {} if self.config.rate_headers == "none" else self._split.headers(now)

    async def _answer(self, request: web.Request, proto: str, p: Parsed, body: bytes) -> web.StreamResponse:
        st, cfg = self._stats, self.config
        ptoks = prompt_tokens(p.texts)
        charge = None
        if proto == ANTHROPIC and self._split.active:
            headers, refused, charge = self._admit_split(p, ptoks)
        else:
            headers, refused = self._admit(proto, p, ptoks)
        if refused is not None:
            return refused

        rng = self._rng
        u = rng.random() if (cfg.drop_rate or cfg.error_rate or cfg.malformed_rate) else 1.0
        if u < cfg.drop_rate:
            outcome = "dropped"
        elif u < cfg.drop_rate + cfg.error_rate:
            outcome = "error"
        elif u < cfg.drop_rate + cfg.error_rate + cfg.malformed_rate:
            outcome = "malformed"
        elif cfg.max_requests is not None and self._granted >= cfg.max_requests:
            outcome = "exhausted"
        else:
            outcome = "answered"
            self._granted += 1
        error_code = rng.choice(cfg.error_codes) if outcome == "error" else 0
        delay = cfg.latency_ms / 1000.0
        if cfg.jitter_ms:
            delay += self._latency_rng.uniform(-cfg.jitter_ms, cfg.jitter_ms) / 1000.0
        if cfg.slow_rate and rng.random() < cfg.slow_rate:
            delay += cfg.slow_s
        # Every random choice of a request is drawn before its first await, in this order: requests
        # in flight together cannot interleave their draws, so a seed gives the k-th request to
        # arrive the same fate in every run (and a run of a given length the same fault counts).
        variant = rng.randrange(3) if outcome == "malformed" else 0
        no_usage = outcome == "answered" and bool(cfg.no_usage_rate) and rng.random() < cfg.no_usage_rate
        if delay > 0:
            await asyncio.sleep(delay)

        if outcome == "answered":
            return self._success(proto, p, body, ptoks, headers, no_usage, charge)
        self._split.correct(charge, 0)  # nothing was written
        if outcome == "dropped":
            return self._drop(request, proto, "dropped", p)
        if outcome == "error":
            st.errors += 1
            st.record(proto, error_code, "error", p)
            msg = "The server had an error while processing your request."
            return self._error(proto, error_code, msg, headers=headers)
        if outcome == "exhausted":
            st.exhausted += 1
            st.record(proto, cfg.exhausted_status, "exhausted", p)
            return self._error(
                proto, cfg.exhausted_status, "You exceeded your current quota.",
                kind="insufficient_quota" if proto == OPENAI else None,
            )
        st.malformed += 1
        st.record(proto, 200, "malformed", p)
        return web.Response(body=malformed_body(proto, variant), headers={"Content-Type": _JSON, **headers})

    def _reply(self, proto: str, p: Parsed, body: bytes, ptoks: int) -> dict[str, Any]:
        """A successful answer's body (counted in the stats); also what a batch request gets."""
        st, cfg = self._stats, self.config
        answer = self._book.lookup(p.last_user) if self._book else None
        outs = []
        ctoks = 0
        n = 1 if cfg.ignore_n else p.n
        for _ in range(n):
            self._counter += 1
            salt = (p.model + p.messages_sha).encode() if cfg.greedy else body + self._counter.to_bytes(8, "little")
            digest = blake2b(salt, digest_size=16).digest()
            text, words, reason = shape(reply_text(digest, answer, cfg.wrong_rate, p.last_user), p.max_tokens, p.stop)
            if cfg.refusal_rate and digest[15] < cfg.refusal_rate * 256:  # stopped part way by a safety filter
                kept = text.split()[: max(1, words // 2)]
                text, words, reason = " ".join(kept), len(kept), "content_filter"
            ctoks += words
            outs.append((text, reason))
        cached = self._cache.cached(f"{proto}:{p.model}:{p.messages_sha}", ptoks) if cfg.prompt_cache else 0
        st.choices += n
        st.input_tokens += ptoks
        st.output_tokens += ctoks
        st.cached_tokens += cached
        rid = f"{self._counter:x}"
        if cfg.usage_factor != 1.0:  # an overbilling provider: the stats above keep the real counts
            ptoks, ctoks = round(ptoks * cfg.usage_factor), round(ctoks * cfg.usage_factor)
        if proto == OPENAI:
            return openai_completion(rid, p.model, outs, ptoks, ctoks, cached)
        return anthropic_message(rid, p.model, outs[0], p.stop, ptoks, ctoks, cached if cfg.prompt_cache else None)

    def _success(self, proto: str, p: Parsed, body: bytes, ptoks: int, headers: dict[str, str],
                 no_usage: bool, charge: list[float] | None = None) -> web.Response:
        payload = self._reply(proto, p, body, ptoks)
        if charge is not None:  # Anthropic's output limit counts what was written, not max_tokens
            self._split.correct(charge, payload["usage"]["output_tokens"])
        if no_usage:
            payload.pop("usage", None)  # a body a strict client cannot account: counted as malformed
            self._stats.malformed += 1
            self._stats.record(proto, 200, "malformed", p)
            return web.Response(body=orjson.dumps(payload), headers={**headers, "Content-Type": _JSON})
        self._stats.answered += 1
        self._stats.record(proto, 200, "answered", p)
        headers["Content-Type"] = _JSON
        return web.Response(body=orjson.dumps(payload), headers=headers)

    def batch_reply(self, proto: str, request_body: dict[str, Any]) -> dict[str, Any]:
        """Answer one request of a batch (RequestInvalid if it is not a valid call)."""
        p = parse_openai(request_body) if proto == OPENAI else parse_anthropic(request_body)
        if p.max_tokens > self.config.max_output_tokens:
            raise RequestInvalid(output_limit(proto, p.model, p.max_tokens, self.config.max_output_tokens))
        payload = self._reply(proto, p, orjson.dumps(request_body), prompt_tokens(p.texts))
        self._stats.batch_requests += 1
        self._stats.record(f"batch:{proto}", 200, "answered", p)
        return payload

    def _drop(self, request: web.Request, proto: str, outcome: str, p: Parsed | None) -> web.Response:
        """Close the connection without a response (the client sees a server disconnect)."""
        self._stats.dropped += outcome == "dropped"
        self._stats.record(proto, 0, outcome, p)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never delivered: the write fails quietly on the closed socket

    @staticmethod
    def api_key(request: web.Request, proto: str) -> str | None:
        if proto == ANTHROPIC and "x-api-key" in request.headers:
            return request.headers["x-api-key"]
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:]
        return request.headers.get("x-api-key")

    @staticmethod
    def _error(
        proto: str, status: int, message: str, *, headers: dict[str, str] | None = None, kind: str | None = None
    ) -> web.Response:
        h = {"Content-Type": _JSON, **(headers or {})}
        return web.Response(status=status, body=error_body(proto, status, message, kind), headers=h)


def _basic_ok(request: web.Request, login: str) -> bool:
    auth = request.headers.get("Authorization", "")
    return auth.startswith("Basic ") and base64.b64decode(auth[6:]).decode(errors="replace") == login
