"""What a provider's response headers say about its limits and when to come back.

Teachers read these from HTTP responses (successes and failures alike) and hand the result to the
engine in `Completion.rate_limits` / `TeacherError.retry_after`; the limiter acts on them. Kept
apart from the provider contract so that contract stays a list of types.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = ["RateLimitInfo", "parse_reset", "parse_retry_after", "rate_limits_from_headers"]


@dataclass
class RateLimitInfo:
    """What a provider told us about its limits (from `x-ratelimit-*` headers), when it did."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


def parse_retry_after(value: str | None) -> float | None:
    """`retry-after` is seconds (possibly fractional) or an HTTP date; also accept `retry-after-ms`."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
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
