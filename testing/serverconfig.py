"""The test teacher server's settings and counters (see `testing/server.py`)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

from .ratelimit import HEADER_STYLES
from .replies import Parsed


@dataclass
class ServerConfig:
    """How the server behaves. Rates are probabilities per request, drawn from one seeded RNG."""

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rpm: float | None = None
    tpm: float | None = None
    # Anthropic's separate input and output token limits (see split_limits.py), on its endpoint.
    itpm: float | None = None
    otpm: float | None = None
    window_s: float = 60.0
    # How rate limits are announced: "openai" (whole-second retry-after only, per-minute limits,
    # Go-duration resets), "kind" (the same plus retry-after-ms), "window" (per-window counts) or
    # "groq" (as "openai", but the requests limit and remaining count requests per day).
    rate_headers: str = "openai"
    error_rate: float = 0.0
    error_codes: tuple[int, ...] = (500, 503)
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = 5.0
    hang: bool = False
    require_api_key: str | None = None
    # "user:password" a gateway in front of the model asks for (HTTP Basic, as nginx's auth_basic):
    # a request without it is a 401 with a WWW-Authenticate challenge, before any key is looked at.
    require_basic: str | None = None
    seed: int = 0
    answers: dict[str, str] | None = None
    wrong_rate: float = 0.0  # share of known-question replies that give a wrong final answer
    ignore_n: bool = False  # answer one choice whatever `n` asks (as some OpenAI-compatible servers do)
    # Decode greedily: ignore temperature, so the same prompt always gets the same reply (as some
    # self-hosted servers do); tests of duplicate-answer detection need such a teacher.
    greedy: bool = False
    # Answer a model name not in `models` with 404 model_not_found, in each provider's own words.
    strict_models: bool = False
    # The most output tokens one request may ask for: a larger max_tokens is a 400 in the
    # provider's words, as every real model has such a cap (gpt-4o-mini: 16,384).
    max_output_tokens: int = 16_384
    max_requests: int | None = None
    exhausted_status: int = 429
    models: tuple[str, ...] = ("test-teacher",)
    log_size: int = 10_000
    # Prompt caching: a prompt seen before reports its cacheable part as cached (OpenAI:
    # prompt_tokens_details.cached_tokens, in 128-token steps from cache_min_tokens; Anthropic:
    # cache_read_input_tokens, not part of input_tokens).
    prompt_cache: bool = False
    cache_min_tokens: int = 1024
    # Batch APIs: seconds in "validating", then seconds per request while "in_progress" (a batch
    # of n takes n * batch_request_s), then seconds in "finalizing". A batch whose processing
    # would outlast batch_expire_s expires with what it finished; batch_fail refuses every batch
    # at validation; batch_error_rate makes single requests of a batch fail.
    batch_validating_s: float = 0.05
    batch_request_s: float = 0.0005
    batch_finalizing_s: float = 0.05
    batch_expire_s: float | None = None
    batch_fail: bool = False
    batch_error_rate: float = 0.0
    # OpenAI's enqueued token limit: the prompt tokens of a model's batches not yet ended may not
    # exceed it. A batch that would go over is created, then fails at validation with
    # `token_limit_exceeded` ("... Please try again once some in_progress batches have been
    # completed."), as OpenAI's does; a tier-1 organisation has 90,000 for gpt-4o.
    batch_enqueued_tokens: int | None = None
    # The most bytes one batch may upload: OpenAI takes a batch input file of up to 200 MB (a larger
    # one: 400 "File is too large."), Anthropic a batch request of up to 256 MB (413
    # request_too_large, from its front door). None: no cap (the server's own body limit holds).
    batch_max_bytes: int | None = None
    # The Nth batch creation (1-based, either API) is carried out, and its reply never comes: the
    # connection hangs until the client gives up, as when it drops after the provider acted. What a
    # resumed run, or the client itself, then has to find without re-submitting it.
    batch_create_hang: int = 0
    # The last N lines of an OpenAI batch's output file come cut off mid-way (a gateway or a broken
    # transfer): the requests ran and were billed, and what they said cannot be read.
    batch_cut_lines: int = 0
    # Faults of a dishonest or sloppy provider (a gateway, an OpenAI-compatible server):
    usage_factor: float = 1.0  # reported usage = real usage x this (> 1: a provider that overbills)
    # Share of answers the provider's safety system stops part way: the text is cut, and OpenAI says
    # finish_reason "content_filter", Anthropic stop_reason "refusal" (billed as written).
    refusal_rate: float = 0.0
    no_usage_rate: float = 0.0  # share of 200s whose body has no `usage` (counted as malformed)
    echo_key: bool = False  # a 401 body repeats the key it was sent, as some gateways do
    # Rate-limit headers that are not numbers (`inf`, `nan`, `1.2.3s`, a date that is not one), as
    # a sloppy gateway may send: a client must ignore them, never sleep forever or drop the answer.
    garbled_headers: bool = False

    def __post_init__(self) -> None:
        self.error_codes = tuple(int(c) for c in self.error_codes)
        self.models = tuple(self.models)
        if self.usage_factor <= 0:
            raise ValueError(f"ServerConfig.usage_factor must be > 0, got {self.usage_factor}")
        for name in ("error_rate", "drop_rate", "malformed_rate", "slow_rate", "wrong_rate", "batch_error_rate",
                     "no_usage_rate", "refusal_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"ServerConfig.{name} must be in [0, 1], got {v}")
        if self.drop_rate + self.error_rate + self.malformed_rate > 1.0:
            raise ValueError("ServerConfig: drop_rate + error_rate + malformed_rate must be <= 1")
        if self.error_rate > 0 and not self.error_codes:
            raise ValueError("ServerConfig.error_codes must not be empty when error_rate > 0")
        if self.window_s <= 0:
            raise ValueError(f"ServerConfig.window_s must be > 0, got {self.window_s}")
        for name in ("itpm", "otpm"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"ServerConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.rate_headers not in HEADER_STYLES:
            raise ValueError(f"ServerConfig.rate_headers must be one of {', '.join(HEADER_STYLES)}, "
                             f"got {self.rate_headers!r}")
        for name in ("batch_validating_s", "batch_request_s", "batch_finalizing_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ServerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_expire_s is not None and self.batch_expire_s <= 0:
            raise ValueError(f"ServerConfig.batch_expire_s must be > 0, got {self.batch_expire_s}")


# Settings that POST /control (and .control()) may change while the server runs.
CONTROLLABLE = frozenset(
    f.name for f in fields(ServerConfig) if f.name not in ("host", "port", "log_size", "models")
)
COUNTERS = (
    "received", "answered", "malformed", "rate_limited", "errors", "dropped", "hung", "auth_failed",
    "bad_requests", "exhausted", "client_gone", "choices", "input_tokens", "output_tokens", "cached_tokens",
    "batches", "batch_requests",
)


class Stats:
    """Counters plus a bounded log of (time, endpoint, status, outcome, model, messages sha)."""

    def __init__(self, log_size: int) -> None:
        self.log: deque[tuple[float, str, int, str, str | None, str | None]] = deque(maxlen=log_size)
        self.zero()

    def zero(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.log.clear()

    def record(self, endpoint: str, status: int, outcome: str, p: Parsed | None) -> None:
        self.log.append((time.time(), endpoint, status, outcome, p.model if p else None, p.messages_sha if p else None))

    def as_dict(self, log: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in COUNTERS}
        if log:
            keys = ("t", "endpoint", "status", "outcome", "model", "sha")
            out["log"] = [dict(zip(keys, rec)) for rec in self.log]
        return out
