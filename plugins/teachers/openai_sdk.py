"""OpenAI chat completions through the official SDK.

The SDK's own retries are off (`max_retries=0`): the engine retries, and only it knows what each
attempt may have cost. `with_raw_response` gives the `x-ratelimit-*` headers the pacer reads.
"""

from __future__ import annotations

from typing import Any

import openai

from synthledger.engine.api import ChatRequest, Completion, Usage, utf8_prompt_bound

from .errors import malformed, rate_limits, sdk_error
from .settings import TeacherSettings, as_settings, resolve_api_key


def _count(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"usage.{name} is not a non-negative integer: {v!r}")
    return v


def _extract(parsed: Any) -> Completion:
    """Read the SDK object defensively: it is built without validation, so fields may be missing."""
    choices = parsed.choices
    if not isinstance(choices, list) or not choices:
        raise ValueError("no choices in the response")
    choices = sorted(choices, key=lambda c: c.index or 0)
    texts: list[str] = []
    for c in choices:
        content = c.message.content
        if content is not None and not isinstance(content, str):
            raise TypeError(f"message.content is {type(content).__name__}, not a string")
        texts.append(content or "")
    usage = parsed.usage
    if usage is None:
        raise ValueError("no usage in the response")
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
    return Completion(
        texts=texts,
        usage=Usage(_count(usage.prompt_tokens, "prompt_tokens"), _count(usage.completion_tokens, "completion_tokens"),
                    0 if cached is None else _count(cached, "prompt_tokens_details.cached_tokens")),
        finish_reasons=[c.finish_reason for c in choices],
        raw_model=parsed.model if isinstance(parsed.model, str) else None,
    )


class OpenAITeacher:
    provider = "openai"
    supports_n = True  # k samples of one prompt in one request, the prompt billed once

    def __init__(self, settings: TeacherSettings) -> None:
        self.settings = settings
        limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
            max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
        )
        self._client = openai.AsyncOpenAI(
            api_key=resolve_api_key(settings, local_placeholder=True),
            base_url=settings.base_url,
            timeout=settings.timeout_s,
            max_retries=0,
            default_headers=settings.headers() or None,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits),
        )
        self.batch_api = None
        if settings.batch:
            from .openai_batch import OpenAIBatchAPI

            self.batch_api = OpenAIBatchAPI(self._client, settings.batch_size, settings.batch_wait_s,
                                            settings.batch_poll_s)

    @property
    def url(self) -> str:
        """The endpoint requests go to (the SDK's default when no base_url is set): named in errors."""
        return str(self._client.base_url).rstrip("/")

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        return utf8_prompt_bound(request.messages)

    async def complete(self, request: ChatRequest) -> Completion:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": list(request.messages),
            # The current name; `max_tokens` is refused by OpenAI's reasoning models.
            "max_completion_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.n != 1:
            kwargs["n"] = request.n
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.stop:
            kwargs["stop"] = list(request.stop)
        try:
            raw = await self._client.chat.completions.with_raw_response.create(**kwargs)
        except openai.OpenAIError as exc:
            mapped = sdk_error(exc, openai, request.model)
            if mapped is None:
                raise
            raise mapped from exc
        try:
            completion = _extract(raw.parse())
        except Exception as exc:  # whatever a broken 200 body does to the SDK, it is "malformed"
            raise malformed(f"{type(exc).__name__}: {exc}", raw.status_code, raw.content, raw.headers) from exc
        completion.rate_limits = rate_limits(raw.headers)
        return completion

    async def aclose(self) -> None:
        await self._client.close()


def factory(settings: TeacherSettings | dict) -> OpenAITeacher:
    return OpenAITeacher(as_settings(settings))
