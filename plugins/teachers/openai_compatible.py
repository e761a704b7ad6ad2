"""A lean client for any OpenAI-compatible `/chat/completions` endpoint (vLLM, llama.cpp, proxies,
our test server).

It exists beside the official SDK because the SDK's per-call cost (pydantic models, httpx) caps a
single core well below the rate the engine's throughput benchmark asks for; here a call is one
orjson encode, one POST on a pooled keep-alive connection (`http1`) and one orjson decode.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from synthledger.engine.api import ChatRequest, Completion, FailureKind, TeacherError, Usage, utf8_prompt_bound

from .env_proxy import env_proxy
from .errors import error_message, malformed, rate_limits, status_error
from .http1 import ConnectFailed, ConnectTimeout, Http1Client, HttpFailure, ReadTimeout, parse_url
from .settings import TeacherSettings, as_settings, resolve_api_key


def _count(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"usage.{name} is not a non-negative integer: {v!r}")
    return v


def completion_from_openai(data: Any) -> Completion:
    """A chat.completion JSON object as a Completion; ValueError/KeyError/TypeError if it is not one."""
    choices = data["choices"]
    if not isinstance(choices, list) or not choices:
        raise ValueError("no choices in the response")
    if len(choices) > 1:
        choices = sorted(choices, key=lambda c: c.get("index", 0))
    texts: list[str] = []
    reasons: list[str | None] = []
    for c in choices:
        content = c["message"].get("content")
        if content is None:  # e.g. a reasoning model stopped before answering: an empty answer
            content = ""
        elif not isinstance(content, str):
            raise TypeError(f"message.content is {type(content).__name__}, not a string")
        texts.append(content)
        reasons.append(c.get("finish_reason"))
    usage = data["usage"]
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Completion(
        texts=texts,
        usage=Usage(
            _count(usage["prompt_tokens"], "prompt_tokens"), _count(usage["completion_tokens"], "completion_tokens"),
            0 if cached is None else _count(cached, "prompt_tokens_details.cached_tokens"),
        ),
        finish_reasons=reasons,
        raw_model=data.get("model"),
    )


class OpenAICompatibleTeacher:
    provider = "openai-compatible"
    supports_n = True  # k samples of one prompt in one request, the prompt billed once

    def __init__(self, settings: TeacherSettings) -> None:
        if not settings.base_url:
            raise ValueError(
                "[teacher] base_url is required for provider 'openai-compatible' (e.g. http://127.0.0.1:8000/v1)"
            )
        if settings.batch:
            raise ValueError("[teacher] batch = true needs provider 'openai' or 'anthropic' (their batch APIs)")
        self.settings = settings
        self.url = settings.base_url  # named in configuration errors
        key = resolve_api_key(settings, local_placeholder=True)
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            **settings.headers(),
        }
        try:
            parse_url(self._url)
        except ValueError as exc:
            raise ValueError(f"[teacher] base_url is not a usable URL: {exc}") from None
        self._proxy, self._proxy_headers = env_proxy(self._url)
        try:
            self._client = self._make_client()  # (a URL or header it cannot send fails here, at start-up)
        except ValueError as exc:
            raise ValueError(f"[teacher] {exc}") from None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _make_client(self) -> Http1Client:
        return Http1Client(
            self._url, self._headers, connect_timeout=self.settings.timeout_s, read_timeout=self.settings.timeout_s,
            max_connections=self.settings.max_connections, proxy=self._proxy, proxy_headers=self._proxy_headers,
        )

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        return utf8_prompt_bound(request.messages)

    def _body(self, r: ChatRequest) -> bytes:
        body: dict[str, Any] = {
            "model": r.model,
            "messages": r.messages,
            "max_tokens": r.max_tokens,
            "temperature": r.temperature,
        }
        if r.n != 1:
            body["n"] = r.n
        if r.top_p is not None:
            body["top_p"] = r.top_p
        if r.seed is not None:
            body["seed"] = r.seed
        if r.stop:
            body["stop"] = r.stop
        return orjson.dumps(body)

    async def complete(self, request: ChatRequest) -> Completion:
        client, loop = self._client, asyncio.get_running_loop()
        if self._loop is not loop:  # connections belong to the loop that made them: a new loop, a new pool
            if self._loop is not None:
                client = self._client = self._make_client()
            self._loop = loop
        try:
            status, headers, raw = await client.post(self._body(request), request.timeout_s)
        except ConnectTimeout as exc:
            raise TeacherError(FailureKind.TIMEOUT, f"connect timed out: {exc}", maybe_billed=False) from exc
        except ConnectFailed as exc:
            raise TeacherError(FailureKind.CONNECTION, f"cannot connect: {exc}", maybe_billed=False) from exc
        except ReadTimeout as exc:
            msg = f"no response within {request.timeout_s or self.settings.timeout_s:g}s"
            raise TeacherError(FailureKind.TIMEOUT, msg, maybe_billed=True) from exc
        except HttpFailure as exc:
            # Disconnected, reset or garbled after the request went out: it may have been served.
            raise TeacherError(FailureKind.CONNECTION, f"{type(exc).__name__}: {exc}", maybe_billed=True) from exc
        if not 200 <= status < 300:
            try:
                parsed_err = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed_err = None
            text = raw[:2000].decode("utf-8", "replace")
            raise status_error(status, error_message(parsed_err, text or "no body"), headers, text, request.model)
        try:
            completion = completion_from_openai(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise malformed(f"{type(exc).__name__}: {exc}", status, raw, headers) from exc
        completion.rate_limits = rate_limits(headers)
        return completion

    async def aclose(self) -> None:
        await self._client.aclose()


def factory(settings: TeacherSettings | dict) -> OpenAICompatibleTeacher:
    return OpenAICompatibleTeacher(as_settings(settings))
