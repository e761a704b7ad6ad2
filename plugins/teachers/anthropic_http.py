"""The `anthropic` provider: Anthropic's Messages API over our own lean HTTP client.

Why not the official SDK for online calls: importing it (pydantic models, httpx) costs 1.5-4 s of
start-up on our machines, paid by every run with an Anthropic teacher; here a call is one orjson
encode, one POST on a pooled keep-alive connection (`json_post`, over `http1`) and one decode.
The request carries what the installed SDK (2.x) sends - its `anthropic-version`, the key as a
bearer token, JSON - and honours the same environment (ANTHROPIC_BASE_URL, ANTHROPIC_CUSTOM_HEADERS,
HTTP(S)_PROXY); failures map through `errors` exactly as the SDK path's did.

Batch mode (`[teacher] batch = true`) still uses the SDK (`anthropic_sdk`), imported only then.
Chat-style `system` messages become the `system` parameter and stop reasons are renamed to the
engine's words (`anthropic_messages`, shared with batch mode).
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from synthledger.engine.api import ChatRequest, Completion, utf8_prompt_bound
from synthledger.engine.redact import header_credentials, register

from .anthropic_messages import _extract, message_params
from .errors import malformed, rate_limits
from .json_post import JsonPoster
from .settings import TeacherSettings, as_settings, keyless_hint, resolve_api_key

# What `anthropic._constants.ANTHROPIC_API_VERSION` says in the SDK we pin (2.x). This version
# refuses sampling parameters, which is why `message_params` sends none.
API_VERSION = "2026-10-21"
DEFAULT_BASE_URL = "https://api.anthropic.com"


def base_url(settings: TeacherSettings) -> str:
    """Where requests go, as the SDK chose it: the setting, else ANTHROPIC_BASE_URL, else the API."""
    return (settings.base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def env_headers() -> dict[str, str]:
    """ANTHROPIC_CUSTOM_HEADERS (`Name: value` lines), which the SDK adds to every request. A value
    that carries a credential (by its header's name or its shape) is registered as a secret: a
    gateway's token goes there (QA: one echoed back in a 401 was printed and stored three times).
    Others are not: a secret is scrubbed from the data too, and `x-team: research` is no secret."""
    out: dict[str, str] = {}
    for line in os.environ.get("ANTHROPIC_CUSTOM_HEADERS", "").split("\n"):
        name, colon, value = line.partition(":")
        if colon and name.strip():
            out[name.strip()] = value.strip()
            if header_credentials({name.strip(): value.strip()}):
                register(value.strip())
    return out


def merged(*layers: dict[str, str]) -> dict[str, str]:
    """Header layers, a later one replacing an earlier one's header of the same name in any case
    (as the SDK's case-insensitive headers do), so no header goes out twice."""
    out: dict[str, str] = {}
    for layer in layers:
        for name, value in layer.items():
            for old in [k for k in out if k.lower() == name.lower()]:
                del out[old]
            out[name] = value
    return out


class AnthropicTeacher:
    provider = "anthropic"

    def __init__(self, settings: TeacherSettings) -> None:
        self.settings = settings
        self.url = base_url(settings)  # named in configuration errors, as the SDK's base_url was
        key = resolve_api_key(settings, local_placeholder=True)
        headers = merged(
            {"Accept": "application/json", "Content-Type": "application/json",
             "anthropic-version": API_VERSION, "Authorization": f"Bearer {key}"},
            env_headers(),
            settings.headers(),
        )
        self._http = JsonPoster(self.url, "/v1/messages", headers, timeout_s=settings.timeout_s,
                                max_connections=settings.max_connections,
                                unauthorized_hint=keyless_hint(settings, key))
        self._sdk: Any = None
        self.batch_api = self._batch_api() if settings.batch else None

    def _batch_api(self) -> Any:
        """Batch mode's API, over the official SDK (imported here, only when `batch = true`)."""
        from .anthropic_sdk import AnthropicSdk

        self._sdk = AnthropicSdk(self.settings)
        return self._sdk.batch_api

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        return utf8_prompt_bound(request.messages)

    async def complete(self, request: ChatRequest) -> Completion:
        body = orjson.dumps(message_params(request))  # (ValueError for n > 1, before anything is sent)
        status, headers, raw = await self._http.post(body, request.timeout_s, request.model)
        try:
            completion = _extract(orjson.loads(raw))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            # Whatever a broken 2xx body is, it is "malformed": the model ran, so it may be billed.
            raise malformed(f"{type(exc).__name__}: {exc}", status, raw, headers) from exc
        completion.rate_limits = rate_limits(headers)
        return completion

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._sdk is not None:
            await self._sdk.aclose()


def factory(settings: TeacherSettings | dict) -> AnthropicTeacher:
    return AnthropicTeacher(as_settings(settings))
