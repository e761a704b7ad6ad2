"""Anthropic messages through the official SDK.

Chat-style `system` messages become the `system` parameter, stop reasons are renamed to the
engine's OpenAI vocabulary ("stop"/"length"), and the API's one-sample-per-call rule is enforced
here rather than silently ignored. `temperature`/`top_p` are not sent: API version 2026-10-21,
which SDK 2.x speaks, rejects every sampling parameter (even at default values) with a 400.
"""

from __future__ import annotations

import contextlib

import anthropic

from synthledger.engine.api import ChatRequest, Completion, utf8_prompt_bound

from .anthropic_messages import _extract, message_params
from .errors import malformed, rate_limits, sdk_error
from .settings import TeacherSettings, as_settings, resolve_api_key


class AnthropicTeacher:
    provider = "anthropic"

    def __init__(self, settings: TeacherSettings) -> None:
        self.settings = settings
        limits = type(anthropic.DEFAULT_CONNECTION_LIMITS)(
            max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
        )
        self._client = anthropic.AsyncAnthropic(
            api_key=resolve_api_key(settings, local_placeholder=True),
            base_url=settings.base_url,
            timeout=settings.timeout_s,
            max_retries=0,
            default_headers=settings.headers() or None,
            http_client=anthropic.DefaultAsyncHttpxClient(limits=limits),
        )
        self.batch_api = None
        if settings.batch:
            from .anthropic_batch import AnthropicBatchAPI

            self.batch_api = AnthropicBatchAPI(self._client, settings.batch_size, settings.batch_wait_s,
                                               settings.batch_poll_s, params=message_params, extract=_extract)

    @property
    def url(self) -> str:
        """The endpoint requests go to (the SDK's default when no base_url is set): named in errors."""
        return str(self._client.base_url).rstrip("/")

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        return utf8_prompt_bound(request.messages)

    async def complete(self, request: ChatRequest) -> Completion:
        kwargs = message_params(request)
        try:
            raw = await self._client.messages.with_raw_response.create(**kwargs)
        except anthropic.AnthropicError as exc:
            mapped = sdk_error(exc, anthropic, request.model)
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
