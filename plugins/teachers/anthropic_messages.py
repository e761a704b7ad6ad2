"""The Messages API wire format, shared by the online provider and its batch mode.

Kept apart from `anthropic_sdk` so the batch module can use it without importing the provider
that lazily imports the batch module (an import cycle).
"""

from __future__ import annotations

from typing import Any

from synthledger.engine.api import ChatRequest, Completion, Usage

# Anthropic's stop reasons in OpenAI's words, which the engine reads: an answer cut off (by max_tokens,
# the context window, or a long turn paused to be continued) is "length"; one a refusal stopped part
# way is "content_filter". Either is an incomplete answer, never a training sample.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "model_context_window_exceeded": "length",
           "pause_turn": "length", "refusal": "content_filter"}


def split_system(messages: tuple[dict[str, str], ...]) -> tuple[str | None, list[dict[str, str]]]:
    system = [m["content"] for m in messages if m.get("role") == "system"]
    rest = [{"role": m["role"], "content": m["content"]} for m in messages if m.get("role") != "system"]
    return ("\n\n".join(system) if system else None), rest


def _count(v: Any, name: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"usage.{name} is not a non-negative integer: {v!r}")
    return v


def _extract(parsed: Any) -> Completion:
    blocks = parsed.content
    if not isinstance(blocks, list):
        raise ValueError("no content in the response")
    text = "".join(b.text for b in blocks if getattr(b, "type", None) == "text")
    usage = parsed.usage
    if usage is None or usage.input_tokens is None or usage.output_tokens is None:
        raise ValueError("no usage in the response")
    # Prompt-cache reads and writes are billed input too (at other rates); count them as input.
    inputs = (
        _count(usage.input_tokens, "input_tokens")
        + _count(getattr(usage, "cache_creation_input_tokens", None), "cache_creation_input_tokens")
        + _count(getattr(usage, "cache_read_input_tokens", None), "cache_read_input_tokens")
    )
    reason = parsed.stop_reason
    cache_reads = _count(getattr(usage, "cache_read_input_tokens", None), "cache_read_input_tokens")
    return Completion(
        texts=[text],
        usage=Usage(inputs, _count(usage.output_tokens, "output_tokens"), cache_reads),
        finish_reasons=[_FINISH.get(reason, reason)],
        raw_model=parsed.model if isinstance(parsed.model, str) else None,
    )


def message_params(request: ChatRequest) -> dict[str, Any]:
    """A ChatRequest as Messages API parameters (online and in a batch alike)."""
    if request.n != 1:
        raise ValueError(f"the Anthropic messages API returns one sample per call; got n={request.n}")
    system, messages = split_system(request.messages)
    # No temperature/top_p: API version 2026-10-21 (sent by SDK 2.x) refuses sampling parameters.
    kwargs: dict[str, Any] = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens}
    if system is not None:
        kwargs["system"] = system
    if request.stop:
        kwargs["stop_sequences"] = list(request.stop)
    return kwargs
