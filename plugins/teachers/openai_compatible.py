"""A lean aiohttp client for any OpenAI-compatible `/chat/completions` endpoint (vLLM, llama.cpp,
proxies, our test server).

It exists beside the official SDK because the SDK's per-call cost (pydantic models, httpx) caps a
single core well below the rate the engine's throughput benchmark asks for; here a call is one
orjson encode, one POST on a pooled keep-alive connection and one orjson decode.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from synthledger.engine.api import ChatRequest, Completion, FailureKind, TeacherError, Usage, utf8_prompt_bound
from synthledger.engine.redact import register

from .errors import error_message, malformed, rate_limits, status_error
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


def env_proxy(url: str) -> tuple[str | None, dict[str, str] | None]:
    """The proxy that HTTP_PROXY / HTTPS_PROXY (less NO_PROXY) name for `url`, and the header that
    carries its credentials: the official SDKs (httpx) honour these variables, so behind a company
    proxy `openai` reached the teacher and `openai-compatible` could not. Read once, here: aiohttp's
    `trust_env` would read the environment and ~/.netrc on every request, and send a netrc login
    beside our Authorization header. The proxy's password is registered as a secret."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None
    if auth is None:
        return str(proxy), None
    header = auth.encode()
    register(auth.password)
    register(header)
    return str(proxy), {"Proxy-Authorization": header}


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
        # Per-phase limits, like the SDKs' httpx timeouts: waiting for a free pooled connection is
        # not counted, so a queued request never times out (and is never "maybe billed") unsent.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=settings.timeout_s, sock_read=settings.timeout_s
        )
        self._proxy, proxy_headers = env_proxy(self._url)
        self._send_kw: dict[str, Any] = {"proxy_headers": proxy_headers} if proxy_headers else {}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        self._loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=self.settings.max_connections, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers, skip_auto_headers=("User-Agent",),
            proxy=self._proxy,
        )
        return self._session

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
        session = self._session
        if session is None or session.closed or self._loop is not asyncio.get_running_loop():
            session = self._new_session()
        try:
            async with session.post(self._url, data=self._body(request), **self._send_kw) as resp:
                status = resp.status
                headers = resp.headers
                raw = await resp.read()
        except aiohttp.ConnectionTimeoutError as exc:
            raise TeacherError(FailureKind.TIMEOUT, f"connect timed out: {exc}", maybe_billed=False) from exc
        except aiohttp.ClientConnectorError as exc:
            raise TeacherError(FailureKind.CONNECTION, f"cannot connect: {exc}", maybe_billed=False) from exc
        except asyncio.TimeoutError as exc:
            msg = f"no response within {self.settings.timeout_s}s"
            raise TeacherError(FailureKind.TIMEOUT, msg, maybe_billed=True) from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise TeacherError(FailureKind.BAD_REQUEST, f"invalid base_url {self.settings.base_url!r}: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
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
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def factory(settings: TeacherSettings | dict) -> OpenAICompatibleTeacher:
    return OpenAICompatibleTeacher(as_settings(settings))
