"""The Messages API wire format, shared by the online provider and its batch mode.

Kept apart from the provider (`anthropic_http`) and from the SDK (`anthropic_sdk`, batch mode only):
the online path must not import the SDK, and the batch module must not import the provider that
lazily imports it (an import cycle).
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


_INPUTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _count(v: Any, name: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"usage.{name} is not a non-negative integer: {v!r}")
    return v


def _field(obj: Any, name: str) -> Any:
    """`obj[name]` of a decoded JSON object, or `obj.name` of the SDK's model (batch results); None if
    absent. Both shapes are read by one `_extract`, so the online and batch modes cannot drift apart."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _extract(parsed: Any) -> Completion:
    """A Messages API `message` as a Completion: the JSON object the online client decodes, or the
    SDK's Message that batch mode reads. ValueError/TypeError when it is not one (a malformed reply)."""
    blocks = _field(parsed, "content")
    if not isinstance(blocks, list):
        raise ValueError("no content in the response")
    text = "".join(_field(b, "text") for b in blocks if _field(b, "type") == "text")
    usage = _field(parsed, "usage")
    if usage is None or _field(usage, "input_tokens") is None or _field(usage, "output_tokens") is None:
        raise ValueError("no usage in the response")
    # Prompt-cache reads and writes are billed input too (at other rates); count them as input.
    fresh, written, cache_reads = (_count(_field(usage, n), n) for n in _INPUTS)
    inputs = fresh + written + cache_reads
    reason = _field(parsed, "stop_reason")
    model = _field(parsed, "model")
    return Completion(
        texts=[text],
        usage=Usage(inputs, _count(_field(usage, "output_tokens"), "output_tokens"), cache_reads),
        finish_reasons=[_FINISH.get(reason, reason)],
        raw_model=model if isinstance(model, str) else None,
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
