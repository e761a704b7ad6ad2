"""What a provider's response headers say about its limits and when to come back.

Teachers read these from HTTP responses (successes and failures alike) and hand the result to the
engine in `Completion.rate_limits` / `TeacherError.retry_after`; the limiter acts on them. Kept
apart from the provider contract so that contract stays a list of types.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = ["RateLimitInfo", "header_count", "parse_reset", "parse_retry_after", "rate_limits_from_headers",
           "wait_seconds"]


@dataclass
class RateLimitInfo:
    """What a provider told us about its limits (from `x-ratelimit-*` headers), when it did."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    # Anthropic's separate input and output limits (`anthropic-ratelimit-input-tokens-limit`, ...).
    limit_input_tokens: int | None = None
    limit_output_tokens: int | None = None


def wait_seconds(value: float) -> float | None:
    """A wait a header gave, as seconds >= 0; None for `inf` or `nan`, which no sleep could end."""
    return max(0.0, value) if math.isfinite(value) else None


def header_count(value: str | None) -> int | None:
    """A limit or remaining count; None when the header is absent or not a finite count >= 0."""
    if value is None:
        return None
    try:
        n = float(value)
    except ValueError:
        return None
    return int(n) if math.isfinite(n) and n >= 0 else None


def parse_retry_after(value: str | None) -> float | None:
    """`retry-after` is seconds (possibly fractional) or an HTTP date; also accept `retry-after-ms`."""
    if value is None:
        return None
    value = value.strip()
    try:
        return wait_seconds(float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = _dt.datetime.now(when.tzinfo or _dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


_PART = r"(\d+(?:\.\d+)?|\.\d+)(ms|h|m|s)"  # one number and its unit, as Go prints durations
_DURATION_PART = re.compile(_PART)
_DURATION = re.compile(f"(?:{_PART})+")


@functools.lru_cache(maxsize=1024)
def parse_reset(value: str | None) -> float | None:
    """OpenAI-style reset durations: '1s', '6m0s', '20ms', or plain seconds; None for anything else.
    Cached: every response carries two, and a provider repeats a few values (its window's steps)."""
    if not value:
        return None
    value = value.strip()
    try:
        return wait_seconds(float(value))
    except ValueError:
        pass
    if not _DURATION.fullmatch(value):
        return None
    total = sum(float(num) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
                for num, unit in _DURATION_PART.findall(value))
    return wait_seconds(total)


_NAMES = tuple(f"x-ratelimit-{what}-{of}" for of in ("requests", "tokens") for what in ("limit", "remaining", "reset"))


def rate_limits_from_headers(headers: Any) -> RateLimitInfo | None:
    """Read the de-facto `x-ratelimit-*` headers (OpenAI, vLLM proxies, our test server)."""
    if headers is None:
        return None

    def geti(name: str) -> int | None:
        return header_count(headers.get(name))

    for name in _NAMES:  # (a provider that sends none: asked of every reply)
        if headers.get(name) is not None:
            break
    else:
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
