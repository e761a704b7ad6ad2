"""OpenAI chat completions through the official SDK (client set-up shared with Anthropic: sdk.py).

`with_raw_response` gives the `x-ratelimit-*` headers the pacer reads.
"""

from __future__ import annotations

from typing import Any

import openai

from synthledger.engine.api import ChatRequest, Completion, Usage

from .errors import malformed, rate_limits
from .sdk import SdkTeacher
from .settings import TeacherSettings


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


class OpenAITeacher(SdkTeacher):
    provider = "openai"
    sdk = openai
    client_class = "AsyncOpenAI"
    error_base = openai.OpenAIError
    supports_n = True  # k samples of one prompt in one request, the prompt billed once

    def _batch_api(self) -> object:
        from .openai_batch import OpenAIBatchAPI

        s = self.settings
        return OpenAIBatchAPI(self._client, s.batch_size, s.batch_wait_s, s.batch_poll_s, s.batch_max_bytes)

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
        if request.timeout_s is not None:  # a retry after a timeout waits longer
            kwargs["timeout"] = request.timeout_s
        raw = await self._call(self._client.chat.completions.with_raw_response.create, **kwargs)
        try:
            completion = _extract(raw.parse())
        except Exception as exc:  # whatever a broken 200 body does to the SDK, it is "malformed"
            raise malformed(f"{type(exc).__name__}: {exc}", raw.status_code, raw.content, raw.headers) from exc
        completion.rate_limits = rate_limits(raw.headers)
        return completion


def factory(settings: TeacherSettings | dict) -> OpenAITeacher:
    return OpenAITeacher.factory(settings)
