"""The contract between the engine and any model provider.

Providers differ in SDKs, headers and error shapes; the scheduler must not care. Every provider
turns a `ChatRequest` into a `Completion` or raises `TeacherError` with one of a small set of
failure kinds, plus the one fact the budget ledger needs: could the failed attempt have been billed?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class FailureKind(str, Enum):
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    MALFORMED = "malformed"

    @property
    def retryable(self) -> bool:
        return self not in (FailureKind.BAD_REQUEST, FailureKind.AUTH)


class ChatRequest(BaseModel):
    """One call to a chat model. `n` > 1 asks for several samples of the same prompt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int = Field(gt=0)
    temperature: float = 0.7
    top_p: float | None = None
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    stop: tuple[str, ...] | None = None


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class RateLimitInfo:
    """What a provider told us about its limits (from `x-ratelimit-*` headers), when it did."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


@dataclass
class Completion:
    texts: list[str]
    usage: Usage
    finish_reasons: list[str | None] = field(default_factory=list)
    rate_limits: RateLimitInfo | None = None
    raw_model: str | None = None


class TeacherError(Exception):
    """A failed attempt, classified. `maybe_billed` is True when the request may have reached the
    model (timeout after send, connection dropped mid-response, unparseable 200 body): the ledger
    then keeps the attempt's worst case as spent."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        maybe_billed: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
        body_excerpt: str | None = None,
        rate_limits: RateLimitInfo | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.maybe_billed = maybe_billed
        self.retry_after = retry_after
        self.status = status
        self.body_excerpt = body_excerpt[:500] if body_excerpt else body_excerpt
        self.rate_limits = rate_limits

    def __repr__(self) -> str:
        return f"TeacherError({self.kind.value}, {self.message!r}, maybe_billed={self.maybe_billed})"


@runtime_checkable
class Teacher(Protocol):
    """A model endpoint. Implementations must be safe to call concurrently from one event loop."""

    provider: str

    async def complete(self, request: ChatRequest) -> Completion: ...

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        """A number of prompt tokens the provider will not exceed for this request.

        The budget reserves this before dispatch, so it must be an upper bound, not a guess."""
        ...

    async def aclose(self) -> None: ...


def utf8_prompt_bound(messages: tuple[dict[str, str], ...] | list[dict[str, Any]]) -> int:
    """An upper bound on prompt tokens for byte-level BPE tokenizers: no token is shorter than one
    byte, plus a generous allowance for the chat template's special tokens."""
    total = 16
    for m in messages:
        total += len(str(m.get("content", "")).encode("utf-8")) + len(str(m.get("role", ""))) + 8
    return total


def parse_retry_after(value: str | None) -> float | None:
    """`retry-after` is seconds (possibly fractional) or an HTTP date; also accept `retry-after-ms`."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    import datetime as _dt

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = _dt.datetime.now(when.tzinfo or _dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


def parse_reset(value: str | None) -> float | None:
    """OpenAI-style reset durations: '1s', '6m0s', '20ms', or plain seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    import re

    total = 0.0
    matched = False
    for num, unit in re.findall(r"([0-9.]+)(ms|h|m|s)", value):
        matched = True
        total += float(num) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if matched else None


def rate_limits_from_headers(headers: Any) -> RateLimitInfo | None:
    """Read the de-facto `x-ratelimit-*` headers (OpenAI, vLLM proxies, our test server)."""
    if headers is None:
        return None

    def geti(name: str) -> int | None:
        v = headers.get(name)
        try:
            return int(float(v)) if v is not None else None
        except ValueError:
            return None

    info = RateLimitInfo(
        limit_requests=geti("x-ratelimit-limit-requests"),
        remaining_requests=geti("x-ratelimit-remaining-requests"),
        reset_requests_s=parse_reset(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=geti("x-ratelimit-limit-tokens"),
        remaining_tokens=geti("x-ratelimit-remaining-tokens"),
        reset_tokens_s=parse_reset(headers.get("x-ratelimit-reset-tokens")),
    )
    if all(v is None for v in vars(info).values()):
        return None
    return info
