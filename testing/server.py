"""A real HTTP teacher for tests and benchmarks: OpenAI chat completions and Anthropic messages.

The engine's hardest promises (an exact budget, no lost or duplicated queries, graceful handling
of every way a provider fails) can only be tested against something that fails the way providers
do: over HTTP, with 429s and retry headers, 5xx bursts, dropped connections, broken 200 bodies and
hangs. This server does all of that on 127.0.0.1, deterministically from a seed, and counts what it
saw so a test can compare the engine's ledger with what the "provider" actually served.

    python -m synthledger.testing.server --port 0 --rpm 6000 --window-s 1 --stats-file s.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from hashlib import blake2b
from pathlib import Path
from typing import Any, Iterator

import orjson
from aiohttp import web

from .ratelimit import SlidingWindow, retry_after_headers
from .replies import AnswerBook, Parsed, RequestInvalid, parse_anthropic, parse_openai, prompt_tokens, reply_text, shape

OPENAI, ANTHROPIC = "chat", "messages"
_JSON = "application/json"


@dataclass
class ServerConfig:
    """How the server behaves. Rates are probabilities per request, drawn from one seeded RNG."""

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rpm: float | None = None
    tpm: float | None = None
    window_s: float = 60.0
    error_rate: float = 0.0
    error_codes: tuple[int, ...] = (500, 503)
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = 5.0
    hang: bool = False
    require_api_key: str | None = None
    seed: int = 0
    answers: dict[str, str] | None = None
    wrong_rate: float = 0.0  # share of known-question replies that give a wrong final answer
    max_requests: int | None = None
    exhausted_status: int = 429
    models: tuple[str, ...] = ("test-teacher",)
    log_size: int = 10_000

    def __post_init__(self) -> None:
        self.error_codes = tuple(int(c) for c in self.error_codes)
        self.models = tuple(self.models)
        for name in ("error_rate", "drop_rate", "malformed_rate", "slow_rate", "wrong_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"ServerConfig.{name} must be in [0, 1], got {v}")
        if self.drop_rate + self.error_rate + self.malformed_rate > 1.0:
            raise ValueError("ServerConfig: drop_rate + error_rate + malformed_rate must be <= 1")
        if self.error_rate > 0 and not self.error_codes:
            raise ValueError("ServerConfig.error_codes must not be empty when error_rate > 0")
        if self.window_s <= 0:
            raise ValueError(f"ServerConfig.window_s must be > 0, got {self.window_s}")


# Settings that POST /control (and .control()) may change while the server runs.
CONTROLLABLE = frozenset(
    f.name for f in fields(ServerConfig) if f.name not in ("host", "port", "log_size", "models")
)
_COUNTERS = (
    "received", "answered", "malformed", "rate_limited", "errors", "dropped", "hung", "auth_failed",
    "bad_requests", "exhausted", "client_gone", "choices", "input_tokens", "output_tokens",
)


class Stats:
    """Counters plus a bounded log of (time, endpoint, status, outcome, model, messages sha)."""

    def __init__(self, log_size: int) -> None:
        self.log: deque[tuple[float, str, int, str, str | None, str | None]] = deque(maxlen=log_size)
        self.zero()

    def zero(self) -> None:
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.log.clear()

    def record(self, endpoint: str, status: int, outcome: str, p: Parsed | None) -> None:
        self.log.append((time.time(), endpoint, status, outcome, p.model if p else None, p.messages_sha if p else None))

    def as_dict(self, log: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in _COUNTERS}
        if log:
            keys = ("t", "endpoint", "status", "outcome", "model", "sha")
            out["log"] = [dict(zip(keys, rec)) for rec in self.log]
        return out


def _error_body(proto: str, status: int, message: str, kind: str | None = None) -> bytes:
    if proto == ANTHROPIC:
        etype = kind or {
            400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error",
        }.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}})
    etype = kind or ("server_error" if status >= 500 else "invalid_request_error")
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    if kind == "insufficient_quota":
        code = kind
    return orjson.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}})


def _anthropic_rate_headers(h: dict[str, str]) -> dict[str, str]:
    """Anthropic's own names for the same limits; its reset is an RFC 3339 instant."""
    out = {}
    now = time.time()
    for kind in ("requests", "tokens"):
        if f"x-ratelimit-limit-{kind}" in h:
            out[f"anthropic-ratelimit-{kind}-limit"] = h[f"x-ratelimit-limit-{kind}"]
            out[f"anthropic-ratelimit-{kind}-remaining"] = h[f"x-ratelimit-remaining-{kind}"]
            reset = now + float(h[f"x-ratelimit-reset-{kind}"].rstrip("s"))
            out[f"anthropic-ratelimit-{kind}-reset"] = (
                datetime.fromtimestamp(reset, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
    return out


class TeacherServer:
    """The server; `await start()` binds (port 0 = ephemeral) and sets `.url`."""

    def __init__(self, config: ServerConfig | None = None, *, stats_file: str | Path | None = None) -> None:
        self.config = config or ServerConfig()
        self.stats_file = Path(stats_file) if stats_file else None
        self._stats = Stats(self.config.log_size)
        self._limiter = SlidingWindow(self.config.rpm, self.config.tpm, self.config.window_s)
        self._book = AnswerBook(self.config.answers)
        self._rng = random.Random(self.config.seed)
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

    # ---- introspection and control (call on the server's loop) -----------------------------------

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
        if {"rpm", "tpm", "window_s"} & changes.keys():
            self._limiter.configure(cfg.rpm, cfg.tpm, cfg.window_s)
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
            if cfg.require_api_key is not None and self._api_key(request, proto) != cfg.require_api_key:
                st.auth_failed += 1
                st.record(proto, 401, "auth_failed", None)
                return self._error(proto, 401, "Incorrect API key provided.")
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
            return await self._answer(request, proto, parsed, body)
        except asyncio.CancelledError:
            st.client_gone += 1
            st.record(proto, 0, "client_gone", parsed)
            raise
        finally:
            self._in_flight -= 1

    async def _answer(self, request: web.Request, proto: str, p: Parsed, body: bytes) -> web.StreamResponse:
        st, cfg = self._stats, self.config
        ptoks = prompt_tokens(p.texts)
        headers: dict[str, str] = {}
        if self._limiter.active:
            cost = ptoks + p.max_tokens * p.n
            limit = self._limiter.token_limit
            if limit is not None and cost > limit:
                st.bad_requests += 1
                st.record(proto, 400, "bad_request", p)
                return self._error(proto, 400, f"request too large: {cost} tokens > {limit} per window")
            decision = self._limiter.acquire(cost, time.monotonic())
            headers = decision.headers
            if proto == ANTHROPIC:
                headers.update(_anthropic_rate_headers(headers))
            if not decision.accepted:
                st.rate_limited += 1
                st.record(proto, 429, "rate_limited", p)
                headers.update(retry_after_headers(decision.retry_after_s))
                msg = f"Rate limit reached; retry after {decision.retry_after_s:.3f}s."
                return self._error(proto, 429, msg, headers=headers, kind="requests" if proto == OPENAI else None)

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
        if delay > 0:
            await asyncio.sleep(delay)

        if outcome == "answered":
            return self._success(proto, p, body, ptoks, headers)
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
        return web.Response(body=self._malformed_body(proto), headers={"Content-Type": _JSON, **headers})

    def _success(self, proto: str, p: Parsed, body: bytes, ptoks: int, headers: dict[str, str]) -> web.Response:
        st, cfg = self._stats, self.config
        answer = self._book.lookup(p.last_user) if self._book else None
        outs = []
        ctoks = 0
        for _ in range(p.n):
            self._counter += 1
            digest = blake2b(body + self._counter.to_bytes(8, "little"), digest_size=16).digest()
            text, words, reason = shape(reply_text(digest, answer, cfg.wrong_rate, p.last_user), p.max_tokens, p.stop)
            ctoks += words
            outs.append((text, reason))
        if proto == OPENAI:
            payload: dict[str, Any] = {
                "id": f"chatcmpl-{self._counter:x}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": p.model,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "length" if reason == "length" else "stop",
                    }
                    for i, (text, reason) in enumerate(outs)
                ],
                "usage": {"prompt_tokens": ptoks, "completion_tokens": ctoks, "total_tokens": ptoks + ctoks},
                "system_fingerprint": "synthledger-test",
            }
        else:
            text, reason = outs[0]
            stop_seq = None
            if reason == "stop_sequence":
                stop_seq = next((s for s in p.stop if s), None)
            payload = {
                "id": f"msg_{self._counter:x}",
                "type": "message",
                "role": "assistant",
                "model": p.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": {"length": "max_tokens", "stop": "end_turn"}.get(reason, reason),
                "stop_sequence": stop_seq,
                "usage": {"input_tokens": ptoks, "output_tokens": ctoks},
            }
        st.answered += 1
        st.choices += p.n
        st.input_tokens += ptoks
        st.output_tokens += ctoks
        st.record(proto, 200, "answered", p)
        headers["Content-Type"] = _JSON
        return web.Response(body=orjson.dumps(payload), headers=headers)

    def _malformed_body(self, proto: str) -> bytes:
        variant = self._rng.randrange(3)
        if variant == 0:  # cut off mid-object
            return b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mess'
        if variant == 1:  # valid JSON, wrong shape
            return b'{"id": "x", "object": "chat.completion", "choices": null}' if proto == OPENAI else (
                b'{"type": "message", "content": null}'
            )
        return b"<html><body><h1>502 Bad Gateway</h1></body></html>"

    def _drop(self, request: web.Request, proto: str, outcome: str, p: Parsed | None) -> web.Response:
        """Close the connection without a response (the client sees a server disconnect)."""
        self._stats.dropped += outcome == "dropped"
        self._stats.record(proto, 0, outcome, p)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never delivered: the write fails quietly on the closed socket

    @staticmethod
    def _api_key(request: web.Request, proto: str) -> str | None:
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
        return web.Response(status=status, body=_error_body(proto, status, message, kind), headers=h)

    async def _models(self, request: web.Request) -> web.Response:
        key = self.config.require_api_key
        if key is not None and self._api_key(request, OPENAI) != key:
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


# ---- running in a background thread, for synchronous tests ---------------------------------------


class ServerHandle:
    """A server running on its own event loop in a daemon thread; methods are thread-safe."""

    def __init__(self, server: TeacherServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self._loop = loop

    @property
    def url(self) -> str:
        return self.server.url

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stats(self, log: bool = False) -> dict[str, Any]:
        return self._call(self.server.stats, log)

    def control(self, **changes: Any) -> dict[str, Any]:
        return self._call(self.server.control, **changes)

    def reset(self) -> None:
        self._call(self.server.reset)


@contextlib.contextmanager
def run_in_thread(config: ServerConfig | None = None, **overrides: Any) -> Iterator[ServerHandle]:
    """`with run_in_thread(ServerConfig(rpm=60)) as srv: ... srv.url ... srv.stats()`."""
    config = replace(config or ServerConfig(), **overrides)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="teacher-server", daemon=True)
    thread.start()
    server = TeacherServer(config)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield ServerHandle(server, loop)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# ---- command line --------------------------------------------------------------------------------


def load_answers(path: str) -> dict[str, str]:
    """A JSON object {question: answer}, or JSONL lines with `question` and `answer` keys."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("{") and not path.endswith(".jsonl"):
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of question -> answer")
        return {str(k): str(v) for k, v in data.items()}
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[str(row["question"])] = str(row["answer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: expected an object with 'question' and 'answer' ({exc})") from None
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m synthledger.testing.server", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port (the printed URL has it)")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--rpm", type=float)
    ap.add_argument("--tpm", type=float)
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--error-rate", type=float, default=0.0)
    ap.add_argument("--error-codes", default="500,503", help="comma-separated HTTP statuses")
    ap.add_argument("--drop-rate", type=float, default=0.0)
    ap.add_argument("--malformed-rate", type=float, default=0.0)
    ap.add_argument("--slow-rate", type=float, default=0.0)
    ap.add_argument("--slow-s", type=float, default=5.0)
    ap.add_argument("--hang", action="store_true")
    ap.add_argument("--require-api-key")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--answers", help="JSON {question: answer} or JSONL with question/answer")
    ap.add_argument("--wrong-rate", type=float, default=0.0)
    ap.add_argument("--max-requests", type=int)
    ap.add_argument("--exhausted-status", type=int, default=429)
    ap.add_argument("--log-size", type=int, default=10_000)
    ap.add_argument("--stats-file", help="stats JSON, rewritten every 0.5 s and on shutdown")
    return ap


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms,
        rpm=args.rpm, tpm=args.tpm, window_s=args.window_s, error_rate=args.error_rate,
        error_codes=tuple(int(c) for c in args.error_codes.split(",") if c.strip()),
        drop_rate=args.drop_rate, malformed_rate=args.malformed_rate, slow_rate=args.slow_rate,
        slow_s=args.slow_s, hang=args.hang, require_api_key=args.require_api_key, seed=args.seed,
        answers=load_answers(args.answers) if args.answers else None, wrong_rate=args.wrong_rate,
        max_requests=args.max_requests, exhausted_status=args.exhausted_status, log_size=args.log_size,
    )


async def _serve_forever(server: TeacherServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await server.start()
    print(f"listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve_forever(TeacherServer(config, stats_file=args.stats_file)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
