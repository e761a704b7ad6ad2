"""One mapping from HTTP outcomes to `TeacherError`, shared by every HTTP provider.

The scheduler retries by kind and the ledger keeps by `maybe_billed`, so three SDKs must agree
exactly on both; keeping the table in one place is how they do.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping

from synthledger.engine.api import (
    FailureKind,
    RateLimitInfo,
    TeacherError,
    header_count,
    parse_retry_after,
    rate_limits_from_headers,
    wait_seconds,
)
from synthledger.engine.redact import one_line


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Prefer the exact `retry-after-ms` (some gateways, our kind test server) over `retry-after`."""
    return retry_after_and_exactness(headers)[0]


def retry_after_and_exactness(headers: Mapping[str, str] | None) -> tuple[float | None, bool]:
    """(seconds, exact): `retry-after-ms` is exact; a whole-second `retry-after` (what OpenAI
    sends, rounded up) is only an upper bound; a fractional one is taken as exact."""
    if headers is None:
        return None, False
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            exact = wait_seconds(float(ms) / 1000.0)
        except ValueError:
            exact = None
        if exact is not None:
            return exact, True
    raw = headers.get("retry-after")
    value = parse_retry_after(raw)
    exact = value is not None and raw is not None and "." in raw
    return value, exact


def _seconds_until(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def rate_limits(headers: Mapping[str, str] | None) -> RateLimitInfo | None:
    """`x-ratelimit-*` headers, or Anthropic's `anthropic-ratelimit-*` (reset as an RFC 3339 instant).

    Anthropic limits input and output tokens apart, and its `tokens-*` headers repeat whichever of
    the two has fewer tokens left. Where the two are sent, they are read instead: pacing prompt +
    max_tokens against the smaller one would use a fraction of either."""
    if headers is None:
        return None
    info = rate_limits_from_headers(headers)
    if info is not None:
        return info
    if (
        headers.get("anthropic-ratelimit-requests-limit") is None
        and headers.get("anthropic-ratelimit-tokens-limit") is None
    ):
        return None
    limit_in = header_count(headers.get("anthropic-ratelimit-input-tokens-limit"))
    limit_out = header_count(headers.get("anthropic-ratelimit-output-tokens-limit"))
    split = limit_in is not None or limit_out is not None
    return RateLimitInfo(
        limit_requests=header_count(headers.get("anthropic-ratelimit-requests-limit")),
        remaining_requests=header_count(headers.get("anthropic-ratelimit-requests-remaining")),
        reset_requests_s=_seconds_until(headers.get("anthropic-ratelimit-requests-reset")),
        limit_tokens=None if split else header_count(headers.get("anthropic-ratelimit-tokens-limit")),
        remaining_tokens=None if split else header_count(headers.get("anthropic-ratelimit-tokens-remaining")),
        reset_tokens_s=None if split else _seconds_until(headers.get("anthropic-ratelimit-tokens-reset")),
        limit_input_tokens=limit_in, limit_output_tokens=limit_out,
    )


def names_missing_model(status: int, message: str, body: str | None, model: str | None) -> bool:
    """A 400/404 that says the requested model does not exist (OpenAI `model_not_found`, Anthropic
    `not_found_error`, vLLM/TGI/`transformers serve` messages naming the model): no retry will help."""
    if status not in (400, 404):
        return False
    text = f"{message} {body or ''}"
    if "model_not_found" in text or (status == 404 and "not_found_error" in text and "model" in text.lower()):
        return True
    low = text.lower()
    return bool(model) and model in text and "model" in low and any(
        w in low for w in ("not found", "does not exist", "not exist", "unknown", "no such", "invalid model",
                           "not available", "not supported", "not a valid"))


def status_error(
    status: int, message: str, headers: Mapping[str, str] | None, body: str | None, model: str | None = None
) -> TeacherError:
    """Classify a non-2xx response. Only a gateway timeout (504) or a 408 can hide a billed call:
    the model may have run behind a proxy that gave up waiting. `model` (the requested one) lets a
    "no such model" answer be told apart from other bad requests. The message is one short line
    (a gateway's HTML error page is many); `body_excerpt` keeps what came back."""
    maybe_billed = False
    if names_missing_model(status, message, body, model):
        kind = FailureKind.MODEL_NOT_FOUND
    elif status == 429 and "request too large" in message.lower():
        kind = FailureKind.TOO_LARGE  # OpenAI: more tokens than its per-minute limit; waiting cannot help
    elif status == 413 or (status == 400 and "file is too large" in message.lower()):
        kind = FailureKind.TOO_LARGE  # more bytes than the endpoint takes (a batch's upload, mostly)
    elif status == 429:
        kind = FailureKind.RATE_LIMITED
    elif status in (401, 403):
        kind = FailureKind.AUTH
    elif status == 408:
        kind, maybe_billed = FailureKind.TIMEOUT, True
    elif status == 409:  # a conflict on the provider's side; OpenAI's own SDK retries it
        kind = FailureKind.SERVER_ERROR
    elif status >= 500:
        kind, maybe_billed = FailureKind.SERVER_ERROR, status == 504
    else:  # other 4xx, and 1xx/3xx (usually a wrong base_url): retrying will not help
        kind = FailureKind.BAD_REQUEST
    wait, exact = retry_after_and_exactness(headers)
    return TeacherError(
        kind,
        f"HTTP {status}: {one_line(message) or 'no body'}",
        maybe_billed=maybe_billed,
        retry_after=wait,
        retry_after_exact=exact,
        status=status,
        body_excerpt=body,
        rate_limits=rate_limits(headers),
    )


def malformed(message: str, status: int | None, body: str | bytes | None, headers: Any = None) -> TeacherError:
    """A 2xx whose body we cannot use. The model did run, so the attempt may be billed."""
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body[:2000]).decode("utf-8", "replace")
    return TeacherError(
        FailureKind.MALFORMED,
        f"malformed response: {one_line(message, 300)}",
        maybe_billed=True,
        status=status,
        body_excerpt=body,
        rate_limits=rate_limits(headers),
    )


def error_message(body: Any, fallback: str) -> str:
    """The provider's own words from an OpenAI- or Anthropic-shaped error body, if any."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str) and err:  # {"error": "..."} (llama.cpp, some proxies)
            return err
        if isinstance(body.get("detail"), str):  # FastAPI servers (`transformers serve`)
            return body["detail"]
    return fallback


# Transport failures that happen before any byte of the request is sent, by exception class name
# (the same in httpx and httpx2, so the SDKs' choice of HTTP library does not matter here).
_NOT_SENT = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout"})
_MISCONFIGURED = frozenset({"UnsupportedProtocol", "InvalidURL"})


def _cause_names(exc: BaseException) -> set[str]:
    names: set[str] = set()
    seen: set[int] = set()
    cur: BaseException | None = exc.__cause__ or exc.__context__
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        names.add(type(cur).__name__)
        cur = cur.__cause__ or cur.__context__
    return names


def _response_text(response: Any) -> str | None:
    try:
        return response.text
    except Exception:  # a body that cannot be decoded must not hide the status
        return None


def sdk_error(exc: Exception, sdk: Any, model: str | None = None) -> TeacherError | None:
    """Map an `openai` or `anthropic` SDK exception (they share a hierarchy); None if not one.

    The message is the provider's own words, as the openai-compatible provider reports them (`HTTP 404:
    ...`), not the SDK's `Error code: 404 - {...}` repr."""
    if isinstance(exc, sdk.APIStatusError):
        resp = exc.response
        text = _response_text(resp)
        message = error_message(exc.body, text or "no body")  # (status_error makes it one short line)
        return status_error(exc.status_code, message, resp.headers, text, model)
    if isinstance(exc, sdk.APIResponseValidationError):
        return malformed(exc.message, exc.status_code, _response_text(exc.response), exc.response.headers)
    if isinstance(exc, sdk.APIConnectionError):
        causes = _cause_names(exc)
        cause = exc.__cause__
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else type(exc).__name__
        if causes & _MISCONFIGURED:
            return TeacherError(FailureKind.BAD_REQUEST, f"cannot send the request ({detail}); check base_url")
        sent = not (causes & _NOT_SENT)
        if isinstance(exc, sdk.APITimeoutError):
            return TeacherError(FailureKind.TIMEOUT, f"request timed out ({detail})", maybe_billed=sent)
        return TeacherError(FailureKind.CONNECTION, f"connection failed ({detail})", maybe_billed=sent)
    return None
