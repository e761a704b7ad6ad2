"""Response bodies of the test teacher server, in each protocol's own shape.

Usage is reported the way each provider reports it: OpenAI counts the prompt once for all `n`
choices and sums the completions, and puts cached prompt tokens *inside* `prompt_tokens`
(`prompt_tokens_details.cached_tokens`); Anthropic reports cache reads *beside* `input_tokens`
(`cache_read_input_tokens`), so a client that reads only `input_tokens` under-counts.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

OPENAI, ANTHROPIC = "chat", "messages"


def error_body(proto: str, status: int, message: str, kind: str | None = None) -> bytes:
    if proto == ANTHROPIC:
        etype = (None if kind == "model_not_found" else kind) or {
            400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error",
        }.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}})
    etype = kind or ("server_error" if status >= 500 else "invalid_request_error")
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    if kind in ("insufficient_quota", "model_not_found"):
        code = kind
    if kind == "model_not_found":
        etype = "invalid_request_error"
    return orjson.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}})


def model_not_found(proto: str, model: str) -> str:
    """What OpenAI and Anthropic say (HTTP 404) about a model they do not serve."""
    if proto == ANTHROPIC:
        return f"model: {model}"
    return f"The model `{model}` does not exist or you do not have access to it."


def output_limit(proto: str, model: str, asked: int, limit: int) -> str:
    """What OpenAI and Anthropic say (HTTP 400) about a max_tokens above the model's output cap."""
    if proto == ANTHROPIC:
        return f"max_tokens: {asked} > {limit}, which is the maximum allowed number of output tokens for {model}"
    return (f"max_tokens is too large: {asked}. This model supports at most {limit} completion tokens, "
            f"whereas you provided {asked}.")


def error_object(proto: str, status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    return orjson.loads(error_body(proto, status, message, kind))


def openai_completion(rid: str, model: str, outs: list[tuple[str, str]], ptoks: int, ctoks: int,
                      cached: int = 0) -> dict[str, Any]:
    """A chat.completion; `outs` are (text, reason) with reason "stop", "stop_sequence", "length" or
    "content_filter"."""
    return {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": reason if reason in ("length", "content_filter") else "stop",
            }
            for i, (text, reason) in enumerate(outs)
        ],
        "usage": {
            "prompt_tokens": ptoks, "completion_tokens": ctoks, "total_tokens": ptoks + ctoks,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "system_fingerprint": "synthledger-test",
    }


def anthropic_message(rid: str, model: str, out: tuple[str, str], stop: list[str], ptoks: int, ctoks: int,
                      cached: int | None = None) -> dict[str, Any]:
    """`cached` None: no prompt cache in play, and the usage has no cache fields at all."""
    text, reason = out
    stop_seq = next((s for s in stop if s), None) if reason == "stop_sequence" else None
    return {
        "id": f"msg_{rid}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": {"length": "max_tokens", "stop": "end_turn", "content_filter": "refusal"}.get(reason, reason),
        "stop_sequence": stop_seq,
        "usage": ({"input_tokens": ptoks, "output_tokens": ctoks} if cached is None else
                  {"input_tokens": ptoks - cached, "output_tokens": ctoks, "cache_read_input_tokens": cached,
                   "cache_creation_input_tokens": 0}),
    }


def malformed_body(proto: str, variant: int) -> bytes:
    if variant == 0:  # cut off mid-object
        return b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mess'
    if variant == 1:  # valid JSON, wrong shape
        return b'{"id": "x", "object": "chat.completion", "choices": null}' if proto == OPENAI else (
            b'{"type": "message", "content": null}'
        )
    return b"<html><body><h1>502 Bad Gateway</h1></body></html>"


class PromptCache:
    """Which prompts were seen: a repeat has its cacheable prefix cached (bounded memory)."""

    def __init__(self, min_tokens: int, size: int = 100_000) -> None:
        self.min_tokens = min_tokens
        self._seen: dict[str, None] = {}
        self._size = size

    def cached(self, key: str, ptoks: int) -> int:
        hit = key in self._seen
        if not hit:
            if len(self._seen) >= self._size:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = None
        if not hit or ptoks < self.min_tokens:
            return 0
        return ptoks // 128 * 128  # OpenAI caches in 128-token steps


def too_large_message(model: str, limit: int, requested: int) -> str:
    """OpenAI's words (HTTP 429, type "tokens", code "rate_limit_exceeded") for a request with more
    tokens than its per-minute limit: a 429 that no wait will clear."""
    return (f"Request too large for {model} in organization org-test on tokens per min (TPM): Limit {limit}, "
            f"Requested {requested}. The input or output tokens must be reduced in order to run successfully. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.")
