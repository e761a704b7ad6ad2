"""JSON POSTs to one provider endpoint over `http1`, every failure a classified TeacherError.

This is the boundary where a lean provider's transport and HTTP failures are translated, once:
what went wrong before anything was sent (not billed), after it was sent (maybe billed), or a
non-2xx answer (`errors.status_error`, the table the SDK providers use too). The caller gets a
2xx's status, headers and body, and only has to read the body (`openai_compatible`,
`anthropic_http`).

The pool belongs to the event loop that made its connections: a call from another loop (each
`asyncio.run`, each test) gets a new pool rather than a connection it cannot use.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import orjson

from synthledger.engine.api import FailureKind, TeacherError, TeacherSetupError

from .env_proxy import basic_auth, env_proxy
from .errors import error_message, status_error
from .http1 import (ConnectFailed, ConnectTimeout, Http1Client, HttpFailure, ReadTimeout, Response, endpoint_url,
                    parse_url)

def with_url_login(url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A user name and password in the URL (https://user:pw@gateway/v1) sent as HTTP Basic auth, as
    the SDKs' httpx sends them (it too replaces an Authorization header given otherwise), the URL
    without them, and the password registered as a secret. Dropped before, they left a gateway in
    front of the model answering every request 401 (QA)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, headers
    basic = basic_auth(parts.username, parts.password)
    kept = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), {**kept, "Authorization": basic}


# How much of an error body is decoded for the message and the excerpt (an HTML error page can be large).
ERROR_BODY_BYTES = 2000


class JsonPoster:
    """POSTs to `base_url` + `path` with `headers` on pooled keep-alive connections (through the
    environment's proxy, if it names one). A base_url, proxy or header it cannot use fails here, at
    start-up, as TeacherSetupError naming what the user gave (not the URL built from it)."""

    def __init__(self, base_url: str, path: str, headers: dict[str, str], *, timeout_s: float,
                 max_connections: int | None = None, unauthorized_hint: str | None = None) -> None:
        try:
            parse_url(base_url)
            url = endpoint_url(base_url, path)
            parse_url(url)
        except ValueError as exc:
            raise TeacherSetupError(f"base_url is not a usable URL: {exc}") from None
        url, headers = with_url_login(url, headers)
        self.url, self.timeout_s = url, timeout_s
        self._headers, self._max_connections = headers, max_connections
        self._unauthorized_hint = unauthorized_hint  # said with a 401/403 (settings.keyless_hint)
        try:
            self._proxy, self._proxy_headers = env_proxy(url)
            self._client = self._make_client()
        except ValueError as exc:  # a proxy it cannot use, a header it cannot send
            raise TeacherSetupError(str(exc)) from None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _make_client(self) -> Http1Client:
        return Http1Client(
            self.url, self._headers, connect_timeout=self.timeout_s, read_timeout=self.timeout_s,
            max_connections=self._max_connections, proxy=self._proxy, proxy_headers=self._proxy_headers,
        )

    async def post(self, body: bytes, timeout_s: float | None, model: str) -> Response:
        """The 2xx response to `body`; TeacherError for anything else. `timeout_s` overrides the read
        timeout (a retry after a timeout waits longer); `model` names a refused model in the error."""
        client, loop = self._client, asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                client = self._client = self._make_client()
            self._loop = loop
        try:
            response = await client.post(body, timeout_s)
        except ConnectTimeout as exc:
            raise TeacherError(FailureKind.TIMEOUT, f"connect timed out: {exc}", maybe_billed=False) from exc
        except ConnectFailed as exc:
            raise TeacherError(FailureKind.CONNECTION, f"cannot connect: {exc}", maybe_billed=False) from exc
        except ReadTimeout as exc:
            msg = f"no response within {timeout_s or self.timeout_s:g}s"
            raise TeacherError(FailureKind.TIMEOUT, msg, maybe_billed=True) from exc
        except HttpFailure as exc:
            # Disconnected, reset or garbled after the request went out: it may have been served.
            raise TeacherError(FailureKind.CONNECTION, f"{type(exc).__name__}: {exc}", maybe_billed=True) from exc
        if not 200 <= response.status < 300:
            err = refusal(response, model)
            if self._unauthorized_hint is not None and err.kind is FailureKind.AUTH:
                err.message = f"{err.message} ({self._unauthorized_hint})"
                err.args = (err.message,)
            raise err
        return response

    async def aclose(self) -> None:
        await self._client.aclose()


def refusal(response: Response, model: str) -> TeacherError:
    """A non-2xx answer, in the provider's own words where its body (OpenAI- or Anthropic-shaped) has them."""
    try:
        parsed = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        parsed = None
    text = response.body[:ERROR_BODY_BYTES].decode("utf-8", "replace")
    return status_error(response.status, error_message(parsed, text or "no body"), response.headers, text, model)
