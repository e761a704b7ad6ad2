"""A lean client for any OpenAI-compatible `/chat/completions` endpoint (vLLM, llama.cpp, proxies,
our test server).

It exists beside the official SDK because the SDK's per-call cost (pydantic models, httpx) caps a
single core well below the rate the engine's throughput benchmark asks for; here a call is one
orjson encode, one POST on a pooled keep-alive connection (`http1`) and one orjson decode.
"""

from __future__ import annotations

from typing import Any

import orjson

from synthledger.engine.api import ChatRequest, Completion, TeacherSetupError, Usage, utf8_prompt_bound

from .errors import malformed, rate_limits
from .json_post import JsonPoster
from .settings import TeacherSettings, as_settings, keyless_hint, resolve_api_key


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
            raise TeacherSetupError("base_url is required for provider 'openai-compatible' (e.g. http://127.0.0.1:8000/v1)")
        if settings.batch:
            raise TeacherSetupError("batch = true needs provider 'openai' or 'anthropic' (their batch APIs)")
        self.settings = settings
        self.url = settings.base_url  # named in configuration errors
        key = resolve_api_key(settings, local_placeholder=True)
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            **settings.headers(),
        }
        self._http = JsonPoster(settings.base_url, "/chat/completions", headers,
                                timeout_s=settings.timeout_s, max_connections=settings.max_connections,
                                unauthorized_hint=keyless_hint(settings, key))

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
        status, headers, raw = await self._http.post(self._body(request), request.timeout_s, request.model)
        try:
            completion = completion_from_openai(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise malformed(f"{type(exc).__name__}: {exc}", status, raw, headers) from exc
        completion.rate_limits = rate_limits(headers)
        return completion

    async def aclose(self) -> None:
        await self._http.aclose()


def factory(settings: TeacherSettings | dict) -> OpenAICompatibleTeacher:
    return OpenAICompatibleTeacher(as_settings(settings))
