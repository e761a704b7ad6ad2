"""Anthropic messages through the official SDK.

Chat-style `system` messages become the `system` parameter, stop reasons are renamed to the
engine's OpenAI vocabulary ("stop"/"length"), and the API's one-sample-per-call rule is enforced
here rather than silently ignored. `temperature`/`top_p` are not sent: API version 2026-10-21,
which SDK 2.x speaks, rejects every sampling parameter (even at default values) with a 400.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anthropic

from synthledger.engine.api import ChatRequest, Completion, Usage, utf8_prompt_bound

from .errors import malformed, rate_limits, sdk_error
from .settings import TeacherSettings, as_settings, resolve_api_key

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def split_system(messages: tuple[dict[str, str], ...]) -> tuple[str | None, list[dict[str, str]]]:
    system = [m["content"] for m in messages if m.get("role") == "system"]
    rest = [{"role": m["role"], "content": m["content"]} for m in messages if m.get("role") != "system"]
    return ("\n\n".join(system) if system else None), rest


def _count(v: Any, name: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"usage.{name} is not a non-negative integer: {v!r}")
    return v


def _extract(parsed: Any) -> Completion:
    blocks = parsed.content
    if not isinstance(blocks, list):
        raise ValueError("no content in the response")
    text = "".join(b.text for b in blocks if getattr(b, "type", None) == "text")
    usage = parsed.usage
    if usage is None or usage.input_tokens is None or usage.output_tokens is None:
        raise ValueError("no usage in the response")
    # Prompt-cache reads and writes are billed input too (at other rates); count them as input.
    inputs = (
        _count(usage.input_tokens, "input_tokens")
        + _count(getattr(usage, "cache_creation_input_tokens", None), "cache_creation_input_tokens")
        + _count(getattr(usage, "cache_read_input_tokens", None), "cache_read_input_tokens")
    )
    reason = parsed.stop_reason
    return Completion(
        texts=[text],
        usage=Usage(inputs, _count(usage.output_tokens, "output_tokens")),
        finish_reasons=[_FINISH.get(reason, reason)],
        raw_model=parsed.model if isinstance(parsed.model, str) else None,
    )


def message_params(request: ChatRequest) -> dict[str, Any]:
    """A ChatRequest as Messages API parameters (online and in a batch alike)."""
    if request.n != 1:
        raise ValueError(f"the Anthropic messages API returns one sample per call; got n={request.n}")
    system, messages = split_system(request.messages)
    # No temperature/top_p: API version 2026-10-21 (sent by SDK 2.x) refuses sampling parameters.
    kwargs: dict[str, Any] = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens}
    if system is not None:
        kwargs["system"] = system
    if request.stop:
        kwargs["stop_sequences"] = list(request.stop)
    return kwargs


class AnthropicTeacher:
    provider = "anthropic"

    def __init__(self, settings: TeacherSettings) -> None:
        self.settings = settings
        limits = type(anthropic.DEFAULT_CONNECTION_LIMITS)(
            max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
        )
        self._client = anthropic.AsyncAnthropic(
            api_key=resolve_api_key(settings),
            base_url=settings.base_url,
            timeout=settings.timeout_s,
            max_retries=0,
            default_headers=settings.extra_headers or None,
            http_client=anthropic.DefaultAsyncHttpxClient(limits=limits),
        )
        self.batch_api = None
        if settings.batch:
            from .anthropic_batch import AnthropicBatchAPI

            self.batch_api = AnthropicBatchAPI(self._client, settings.batch_size, settings.batch_wait_s,
                                               settings.batch_poll_s, params=message_params, extract=_extract)

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        return utf8_prompt_bound(request.messages)

    async def complete(self, request: ChatRequest) -> Completion:
        kwargs = message_params(request)
        try:
            raw = await self._client.messages.with_raw_response.create(**kwargs)
        except anthropic.AnthropicError as exc:
            mapped = sdk_error(exc, anthropic)
            if mapped is None:
                raise
            raise mapped from exc
        try:
            completion = _extract(await raw.parse())
        except Exception as exc:  # whatever a broken 200 body does to the SDK, it is "malformed"
            body = None
            with contextlib.suppress(Exception):
                body = await raw.read()
            raise malformed(f"{type(exc).__name__}: {exc}", raw.status_code, body, raw.headers) from exc
        completion.rate_limits = rate_limits(raw.headers)
        return completion

    async def aclose(self) -> None:
        await self._client.close()


def factory(settings: TeacherSettings | dict) -> AnthropicTeacher:
    return AnthropicTeacher(as_settings(settings))
