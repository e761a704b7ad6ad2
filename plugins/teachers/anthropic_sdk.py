"""Anthropic messages through the official SDK.

Chat-style `system` messages become the `system` parameter, stop reasons are renamed to the
engine's OpenAI vocabulary ("stop"/"length"), and the API's one-sample-per-call rule is enforced
here rather than silently ignored. `temperature`/`top_p` are not sent: API version 2026-10-21,
which SDK 2.x speaks, rejects every sampling parameter (even at default values) with a 400.
"""

from __future__ import annotations

import contextlib

import anthropic

from synthledger.engine.api import ChatRequest, Completion

from .anthropic_messages import _extract, message_params
from .errors import malformed, rate_limits
from .sdk import SdkTeacher
from .settings import TeacherSettings


class AnthropicTeacher(SdkTeacher):
    provider = "anthropic"
    sdk = anthropic
    client_class = "AsyncAnthropic"
    error_base = anthropic.AnthropicError

    def _batch_api(self) -> object:
        from .anthropic_batch import AnthropicBatchAPI

        s = self.settings
        return AnthropicBatchAPI(self._client, s.batch_size, s.batch_wait_s, s.batch_poll_s,
                                 params=message_params, extract=_extract, max_bytes=s.batch_max_bytes)

    async def complete(self, request: ChatRequest) -> Completion:
        kwargs = message_params(request)
        if request.timeout_s is not None:  # a retry after a timeout waits longer
            kwargs["timeout"] = request.timeout_s
        raw = await self._call(self._client.messages.with_raw_response.create, **kwargs)
        try:
            completion = _extract(await raw.parse())
        except Exception as exc:  # whatever a broken 200 body does to the SDK, it is "malformed"
            body = None
            with contextlib.suppress(Exception):
                body = await raw.read()
            raise malformed(f"{type(exc).__name__}: {exc}", raw.status_code, body, raw.headers) from exc
        completion.rate_limits = rate_limits(raw.headers)
        return completion


def factory(settings: TeacherSettings | dict) -> AnthropicTeacher:
    return AnthropicTeacher.factory(settings)
