"""Sliding-window request and token limits for the test teacher server, and the headers about them.

Real providers enforce limits over a rolling window and count a request's tokens as prompt plus
`max_tokens` at arrival. The window here is exact (a deque of accepted requests), so a test can
send more than the limit within one window and count precisely how many were refused.

What the headers say comes in five styles, because clients must cope with all of them:
- "openai" (the default, and as unkind as OpenAI): limits per *minute*, remaining in the same
  unit, resets as Go durations (`1s`, `6m0s`, `120ms`), and a 429 carries only a whole-second
  `retry-after` (ceil, at least 1) - no exact wait anywhere;
- "kind": the same plus `retry-after-ms`, the exact wait;
- "window": per-window counts (what some gateways announce) plus `retry-after-ms`;
- "groq": as "openai", except that `x-ratelimit-limit-requests` and `-remaining-requests` count
  requests per *day* (as Groq documents them): a client that takes them for a per-minute limit
  paces hundreds of times too fast.
- "none": no rate-limit headers at all, and a 429 says only a whole-second `retry-after` (what
  many self-hosted gateways and proxies send): a client learns nothing from a success.
Anthropic's `anthropic-ratelimit-*` names (reset as an RFC 3339 instant) follow the same numbers.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

HEADER_STYLES = ("openai", "kind", "window", "groq", "none")
DAY_PER_MINUTE = 480  # the "groq" style's requests per day per request per minute (Groq's free tier: 30 RPM, 14,400 RPD)


@dataclass
class Decision:
    """Outcome of one admission check, plus what the rate-limit headers should say."""

    accepted: bool
    retry_after_s: float
    headers: dict[str, str]


def go_duration(seconds: float) -> str:
    """A duration as Go prints it (and OpenAI sends it): `120ms`, `1s`, `8.64s`, `6m0s`, `1h0m0s`."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def wait_to_free(charges: Iterable[Sequence[float]], need: float, window_s: float, now: float) -> float:
    """Seconds until the oldest of `charges` ((time, tokens, ...), oldest first) leave the window
    and free `need` tokens; a whole window when all of them would not (too large for any window)."""
    freed = 0.0
    for t, k, *_ in charges:
        freed += k
        if freed >= need:
            return t + window_s - now
    return window_s


def rfc3339_after(seconds: float) -> str:
    """The wall-clock instant `seconds` from now as Anthropic writes its resets (`...123Z`)."""
    stamp = datetime.fromtimestamp(time.time() + seconds, timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class SlidingWindow:
    """Requests and tokens accepted in the last `window_s` seconds (None limit = unlimited)."""

    def __init__(self, rpm: float | None, tpm: float | None, window_s: float, style: str = "openai") -> None:
        self._events: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self._accepted = 0  # since start: what a per-day count has used
        self.configure(rpm, tpm, window_s, style)

    def configure(self, rpm: float | None, tpm: float | None, window_s: float, style: str = "openai") -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if style not in HEADER_STYLES:
            raise ValueError(f"rate header style must be one of {', '.join(HEADER_STYLES)}, got {style!r}")
        self.window_s = float(window_s)
        self.style = style
        self.rpm, self.tpm = rpm, tpm
        # Per-window limits; at least one so that a tiny rpm still lets something through.
        self.request_limit = None if rpm is None else max(1, int(rpm * window_s / 60.0))
        self.token_limit = None if tpm is None else max(1, int(tpm * window_s / 60.0))

    @property
    def active(self) -> bool:
        return self.request_limit is not None or self.token_limit is not None

    def reset(self) -> None:
        self._events.clear()
        self._tokens = 0
        self._accepted = 0

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        events = self._events
        while events and events[0][0] <= cutoff:
            self._tokens -= events.popleft()[1]

    def acquire(self, tokens: int, now: float) -> Decision:
        """Admit the request if both limits allow it; otherwise say when they will."""
        self._expire(now)
        events = self._events
        wait = 0.0
        if self.request_limit is not None and len(events) >= self.request_limit:
            # The oldest (len - limit + 1) entries must leave the window first.
            wait = events[len(events) - self.request_limit][0] + self.window_s - now
        if self.token_limit is not None and self._tokens + tokens > self.token_limit:
            # (one that cannot fit even in an empty window waits a whole one; the caller rejects those earlier)
            wait = max(wait, wait_to_free(events, self._tokens + tokens - self.token_limit, self.window_s, now))
        accepted = wait <= 0.0
        if accepted:
            events.append((now, tokens))
            self._tokens += tokens
            self._accepted += 1
        return Decision(accepted, max(0.0, wait), self._headers(now))

    def state(self, now: float) -> list[tuple[str, int, int, float]]:
        """(kind, limit, remaining, seconds until the window is empty) as the headers announce
        them: per minute, or per window in the "window" style."""
        events = self._events
        full_reset = max(0.0, (events[-1][0] + self.window_s - now) if events else 0.0)
        per_window = self.style == "window"
        scale = 1.0 if per_window else 60.0 / self.window_s
        out = []
        for kind, limit, used, per_minute in (("requests", self.request_limit, len(events), self.rpm),
                                              ("tokens", self.token_limit, self._tokens, self.tpm)):
            if limit is None or per_minute is None:
                continue
            if kind == "requests" and self.style == "groq":  # the day's count, not the window's
                day = int(per_minute * DAY_PER_MINUTE)
                out.append((kind, day, max(0, day - self._accepted), full_reset))
                continue
            left = max(0, limit - used)
            out.append((kind, limit if per_window else int(per_minute), int(left * scale), full_reset))
        return out

    def _headers(self, now: float) -> dict[str, str]:
        h: dict[str, str] = {}
        if self.style == "none":
            return h
        for kind, limit, left, reset in self.state(now):
            h[f"x-ratelimit-limit-{kind}"] = str(limit)
            h[f"x-ratelimit-remaining-{kind}"] = str(left)
            h[f"x-ratelimit-reset-{kind}"] = f"{reset:.3f}s" if self.style == "window" else go_duration(reset)
        return h

    def anthropic_headers(self, now: float) -> dict[str, str]:
        """Anthropic's own names for the same limits; its reset is an RFC 3339 instant. A token
        limit here counts prompt + max_tokens, which is none of Anthropic's split input and output
        limits (split_limits.py has those): it is announced only as `tokens-*`."""
        out: dict[str, str] = {}
        if self.style == "none":
            return out
        for kind, limit, left, reset in self.state(now):
            out[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            out[f"anthropic-ratelimit-{kind}-remaining"] = str(left)
            out[f"anthropic-ratelimit-{kind}-reset"] = rfc3339_after(reset)
        return out

    def retry_headers(self, seconds: float) -> dict[str, str]:
        """`retry-after` is whole seconds (ceil, so obeying it always suffices); only the kind
        styles add the exact `retry-after-ms`."""
        out = {"retry-after": str(max(1, math.ceil(seconds)))}
        if self.style in ("kind", "window"):
            out["retry-after-ms"] = str(max(1, math.ceil(seconds * 1000.0)))
        return out


def retry_after_headers(seconds: float) -> dict[str, str]:
    """Both retry headers (the "kind" styles); kept for callers outside the server."""
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000.0)))}


GARBLED = {"x-ratelimit-limit-requests": "inf", "x-ratelimit-remaining-requests": "nan",
           "x-ratelimit-reset-requests": "1.2.3s", "x-ratelimit-limit-tokens": "1e400",
           "x-ratelimit-remaining-tokens": "-5", "x-ratelimit-reset-tokens": "soon",
           "anthropic-ratelimit-requests-limit": "inf", "anthropic-ratelimit-requests-remaining": "nan",
           "anthropic-ratelimit-requests-reset": "not-a-date", "anthropic-ratelimit-tokens-limit": "-1",
           "retry-after": "inf", "retry-after-ms": "nan"}


def garbled(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with every rate-limit value a client might read replaced by one it cannot use."""
    return {k: GARBLED.get(k, v) for k, v in headers.items()}
