"""Accuracy of a model (or LoRA adapter) on held-out questions: greedy, batched generation, the
task's own answer extraction and comparison, and every prediction written down for inspection.

Prompts are sorted by length before batching so that left padding wastes little, and each batch
stops as soon as all its rows have ended; results go back to the input order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from synthledger.engine.api import Task

from .options import AccuracyOptions

OnEvent = Callable[[str, dict[str, Any]], None]


def build_messages(question: str, task: Task, options: AccuracyOptions) -> list[dict[str, str]]:
    content = question
    if options.include_instruction and task.instruction:
        content = f"{question}\n\n{task.instruction}"
    messages = [{"role": "system", "content": options.system_prompt}] if options.system_prompt else []
    return messages + [{"role": "user", "content": content}]


def evaluate(model_or_adapter: str, examples: list[dict[str, str]], task: Task,
             options: AccuracyOptions | dict[str, Any] | None = None, out_path: Path | str | None = None,
             on_event: OnEvent | None = None, progress: bool = True) -> dict[str, Any]:
    """Score `examples` ({question, answer}) and write per-example predictions as JSONL."""
    from synthledger.plugins.hf_models import eos_token_ids, load_causal_lm

    options = options if isinstance(options, AccuracyOptions) else AccuracyOptions.model_validate(options or {})
    emit = on_event or (lambda kind, payload: None)
    if not examples:
        raise ValueError("evaluation needs at least one held-out example")
    out = Path(out_path) if out_path is not None else Path("predictions.jsonl")
    loaded = load_causal_lm(model_or_adapter, device=options.device, bf16=options.bf16, padding_side="left")
    tokenizer, model = loaded.tokenizer, loaded.model
    eos = eos_token_ids(loaded)
    emit("eval_started", {
        "model": model_or_adapter, "base": loaded.base, "adapter": loaded.adapter, "task": task.name,
        "n": len(examples), "batch_size": options.batch_size, "max_new_tokens": options.max_new_tokens,
        "device": loaded.device, "dtype": loaded.dtype,
    })

    generated, wall = _generate(loaded, examples, task, options, eos, progress)
    correct, output_tokens = _score(tokenizer, examples, generated, task, out)
    result = {
        "accuracy": correct / len(examples),
        "n": len(examples),
        "correct": correct,
        "predictions_path": str(out),
        "examples_per_s": len(examples) / wall if wall > 0 else 0.0,
        "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "model": model_or_adapter,
        "base": loaded.base,
        "adapter": loaded.adapter,
        "task": task.name,
        "batch_size": options.batch_size,
        "max_new_tokens": options.max_new_tokens,
        "device": loaded.device,
    }
    emit("eval_finished", result)
    return result


def _generate(loaded: Any, examples: list[dict[str, str]], task: Task, options: AccuracyOptions, eos: set[int],
              progress: bool) -> tuple[dict[int, list[int]], float]:
    """Greedy answers, longest prompts first (batches of similar length pad least); the new
    tokens of each example up to its end-of-sequence, and the wall time generation took."""
    import torch

    from synthledger.plugins.hf_models import left_pad

    tokenizer, model = loaded.tokenizer, loaded.model
    prompts = [
        tokenizer(tokenizer.apply_chat_template(build_messages(e["question"], task, options), tokenize=False,
                                                add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for e in examples
    ]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]), reverse=True)
    generated: dict[int, list[int]] = {}
    bar = _progress(progress, len(examples))
    started = time.perf_counter()
    try:
        for start in range(0, len(order), options.batch_size):
            chunk = order[start:start + options.batch_size]
            batch = left_pad([prompts[i] for i in chunk], tokenizer.pad_token_id, loaded.device)
            with torch.inference_mode():
                output = model.generate(**batch, max_new_tokens=options.max_new_tokens, do_sample=False,
                                        eos_token_id=sorted(eos), pad_token_id=tokenizer.pad_token_id)
            for i, row in zip(chunk, output[:, batch["input_ids"].shape[1]:].tolist()):
                generated[i] = _until_eos(row, eos)
            if bar is not None:
                bar.update(advance=len(chunk))
    finally:
        if bar is not None:
            bar.stop()
    return generated, time.perf_counter() - started


def _score(tokenizer: Any, examples: list[dict[str, str]], generated: dict[int, list[int]], task: Task,
           out: Path) -> tuple[int, int]:
    """Write one prediction line per example; (correct answers, output tokens)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    correct = output_tokens = 0
    with out.open("w", encoding="utf-8") as fh:
        for i, example in enumerate(examples):
            prediction = tokenizer.decode(generated[i], skip_special_tokens=True)
            extracted = task.extract(prediction)
            ok = bool(task.equivalent(extracted, example["answer"]))
            correct += ok
            output_tokens += len(generated[i])
            fh.write(json.dumps({
                "index": i, "question": example["question"], "gold": example["answer"], "prediction": prediction,
                "extracted": extracted, "correct": ok, "output_tokens": len(generated[i]),
            }, ensure_ascii=False) + "\n")
    return correct, output_tokens


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for k, token in enumerate(tokens):
        if token in eos:
            return tokens[: k + 1]
    return tokens


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from ..step_progress import StepProgress

    return StepProgress("evaluating", total)
