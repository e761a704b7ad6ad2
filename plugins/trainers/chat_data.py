"""Chat rows -> token ids and labels, with the loss on the assistant's tokens only.

The student's own chat template decides the text. Assistant spans are found by rendering the
conversation up to each assistant turn (with the generation prompt) and through it: the
characters in between are what the model must learn to produce, including its end-of-turn
token. Token offsets map those characters back to tokens, so any prefix-stable template works
without `{% generation %}` markers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from synthledger.engine.output.chat_rows import messages_problem

from .options import TrainingError

IGNORE_INDEX = -100


@dataclass
class EncodedRow:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class EncodedDataset:
    rows: list[EncodedRow]
    total: int  # rows given
    truncated: int = 0  # kept, but cut to max_length
    dropped: int = 0  # not used at all
    dropped_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(len(r.input_ids) for r in self.rows)


def validate_messages(row: Any, index: int) -> list[dict[str, str]]:
    """The row's messages, or a TrainingError naming the row and key path that is wrong."""
    problem = messages_problem(row)
    if problem is not None:
        raise TrainingError(f"training row {index}: {problem}")
    return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def encode_messages(tokenizer: Any, messages: list[dict[str, str]], index: int = 0) -> EncodedRow:
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:j], True)
        through = _render(tokenizer, messages[: j + 1], False)
        if not (through.startswith(before) and full.startswith(through)):
            raise TrainingError(
                f"training row {index}, messages[{j}]: the student's chat template does not render this "
                "conversation prefix-stably, so the assistant tokens cannot be located (an assistant turn "
                "first, or a template that rewrites earlier turns?)"
            )
        # Up to the end-of-turn marker; the whitespace after it is template layout, not the reply.
        spans.append((len(before), len(through.rstrip())))
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(input_ids, encoding["offset_mapping"])
    ]
    return EncodedRow(input_ids, labels)


def encode_rows(tokenizer: Any, rows: Iterable[dict[str, Any]], max_length: int,
                overlength: Literal["truncate", "drop"]) -> EncodedDataset:
    encoded: list[EncodedRow] = []
    result = EncodedDataset(rows=encoded, total=0)
    for index, row in enumerate(rows):
        result.total += 1
        item = encode_messages(tokenizer, validate_messages(row, index), index)
        if len(item.input_ids) > max_length:
            if overlength == "drop":
                _drop(result, "longer than max_length")
                continue
            item = EncodedRow(item.input_ids[:max_length], item.labels[:max_length])
            if item.trained_tokens == 0:
                _drop(result, "no assistant tokens within max_length")
                continue
            result.truncated += 1
        encoded.append(item)
    return result


def _drop(result: EncodedDataset, reason: str) -> None:
    result.dropped += 1
    result.dropped_reasons[reason] = result.dropped_reasons.get(reason, 0) + 1


def dataset_hash(rows: list[dict[str, Any]]) -> str:
    """Content hash of the training rows as given (order included)."""
    from synthledger.store.hashing import canonical

    h = hashlib.sha256()
    for row in rows:
        h.update(canonical(row))
        h.update(b"\n")
    return h.hexdigest()


class PadCollator:
    """Pads each batch to its own longest row (right side); padding is masked from loss and
    attention. Cheap enough to run in the training process."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.tensor(f["labels"], dtype=torch.long)
            attention_mask[i, :k] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
