"""The SFT loss computed on the positions that have a label, and nowhere else.

A causal LM's forward projects every position onto the vocabulary (49k entries for SmolLM2)
before the loss discards the prompt's positions. For chat SFT that is about half of the
positions, and the projection plus its softmax is a fifth of a small model's compute and most of
its activation memory. Here the decoder runs as usual and only the labelled positions go through
the LM head. The value is the same loss transformers computes (sum over labelled tokens divided
by `num_items_in_batch`, or their mean without it), so the optimisation is unchanged.

Used only for architectures whose logits are exactly `lm_head(last_hidden_state)`: models that
scale or soft-cap logits (Gemma 2, Cohere, Granite...) take the ordinary path.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "olmo2"})


def supports_fast_loss(model: Any) -> bool:
    """True for a (peft-wrapped) model whose logits are a plain projection of the decoder output."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    return (
        model_type in PLAIN_HEAD_MODEL_TYPES
        and callable(getattr(base, "get_decoder", None))
        and callable(getattr(base, "get_output_embeddings", None))
        and base.get_output_embeddings() is not None
    )


def labelled_positions_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    hidden = decoder(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                     use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    loss = F.cross_entropy(logits, targets[keep], ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        return loss / keep.sum().clamp(min=1)
    if hasattr(num_items_in_batch, "to"):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
