"""LoRA supervised fine-tuning of the student on the exported chat rows.

transformers' `Trainer` runs the loop (optimizer, scheduler, mixed precision, accumulation); what
is ours is the data path, which is where the time goes on small models: rows are tokenized with
the student's chat template and labelled on assistant tokens only, batches are padded to their own
longest row, and rows are grouped by length so little of each batch is padding.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from synthledger.plugins.hf_models import (
    UnknownModel,
    bf16_supported,
    is_adapter,
    load_tokenizer,
    pick_device,
    resolve_model,
)

from .chat_data import EncodedDataset, PadCollator, dataset_hash, encode_rows
from .options import LoraSFTOptions, TrainingError

OnEvent = Callable[[str, dict[str, Any]], None]


def _no_events(kind: str, payload: dict[str, Any]) -> None:
    return None


def train(rows: list[dict[str, Any]], options: LoraSFTOptions | dict[str, Any] | None, out_dir: Path | str,
          on_event: OnEvent | None = None, progress: bool = True) -> dict[str, Any]:
    """Train a LoRA adapter on `rows`; return (and report) the training_finished payload."""
    options = options if isinstance(options, LoraSFTOptions) else LoraSFTOptions.model_validate(options or {})
    emit = on_event or _no_events
    out = Path(out_dir)
    rows = list(rows)
    try:
        prepared = _prepare(rows, options)
    except (TrainingError, UnknownModel) as exc:
        emit("training_failed", {"reason": str(exc)})
        raise
    student, tokenizer, data = prepared
    emit("training_started", {
        "dataset_hash": dataset_hash(rows),
        "rows": data.total,
        "used": len(data.rows),
        "dropped": data.dropped,
        "dropped_reasons": data.dropped_reasons,
        "truncated": data.truncated,
        "tokens": data.tokens,
        "student": options.student,
        "student_path": student,
        "hyperparameters": options.model_dump(mode="json"),
    })
    try:
        finished = _fit(student, tokenizer, data, options, out, emit, progress, dataset_hash(rows))
    except Exception as exc:
        emit("training_failed", {"reason": f"{type(exc).__name__}: {exc}"})
        if isinstance(exc, TrainingError):
            raise
        raise TrainingError(f"training failed: {type(exc).__name__}: {exc}") from exc
    emit("training_finished", finished)
    return finished


def _prepare(rows: list[dict[str, Any]], options: LoraSFTOptions) -> tuple[str, Any, EncodedDataset]:
    if not rows:
        raise TrainingError("no training rows: the dataset is empty (did the run accept any samples?)")
    student = resolve_model(options.student)
    if is_adapter(student):
        raise TrainingError(
            f"student {options.student!r} is a LoRA adapter; train on a full model (train with merge = true "
            "and use its merged/ folder)"
        )
    tokenizer = load_tokenizer(student, padding_side="right")
    data = encode_rows(tokenizer, rows, options.max_length, options.overlength)
    if not data.rows:
        reasons = ", ".join(f"{n} {why}" for why, n in data.dropped_reasons.items())
        raise TrainingError(
            f"all {data.total} training rows were dropped ({reasons}); raise max_length "
            f"(now {options.max_length}) or set overlength = 'truncate'"
        )
    return student, tokenizer, data


class TokenCounter:
    """Counts what the model actually processed: real tokens and padded positions per training step.

    Counted from each training batch rather than a forward hook, because the fast loss runs the
    decoder directly and a hook on the wrapped model would never fire."""

    def __init__(self) -> None:
        self.real: Any = 0
        self.padded = 0

    def add(self, inputs: dict[str, Any]) -> None:
        mask = inputs.get("attention_mask")
        if mask is not None:
            self.real = self.real + mask.sum()  # stays on the device: no sync per step
            self.padded += mask.numel()

    def close(self) -> tuple[int, int]:
        return int(self.real), int(self.padded)


DEFAULT_LOGGING_STEPS = 10  # runs of EVERY_STEP_BELOW steps or more, when logging_steps is not set


def training_arguments(options: LoraSFTOptions, device: str, scratch: Path) -> Any:
    """The TrainingArguments for `options` (the benchmark's baseline uses the very same ones)."""
    from transformers import TrainingArguments

    use_bf16 = bf16_supported(device) if options.bf16 == "auto" else bool(options.bf16)
    return TrainingArguments(
        output_dir=str(scratch),
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,
        learning_rate=options.learning_rate,
        lr_scheduler_type=options.lr_scheduler,
        warmup_steps=options.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=options.weight_decay,
        logging_steps=options.logging_steps or DEFAULT_LOGGING_STEPS,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=options.seed,
        data_seed=options.seed,
        bf16=use_bf16,
        use_cpu=not device.startswith("cuda"),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        label_names=["labels"],
    )


def lora_model(student: str, options: LoraSFTOptions) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(options.seed)  # LoRA's A matrices are random: same seed, same adapter
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    model.config.use_cache = False
    config = LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=options.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            # peft probes a property transformers 5 deprecated; nothing for our users to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:
        raise TrainingError(f"target_modules {options.target_modules!r}: {exc}") from exc


def _fit(student: str, tokenizer: Any, data: EncodedDataset, options: LoraSFTOptions, out: Path,
         emit: OnEvent, progress: bool, data_hash: str) -> dict[str, Any]:
    import tempfile

    from transformers.trainer_callback import PrinterCallback

    from .fast_loss import supports_fast_loss
    from .reporting import EventCallback

    device = pick_device(options.device)
    model = lora_model(student, options)
    features = [{"input_ids": r.input_ids, "labels": r.labels} for r in data.rows]
    fast_loss = options.fast_loss and supports_fast_loss(model)
    callback = EventCallback(emit, progress, every_step_if_short=options.logging_steps is None)
    counter = TokenCounter()
    trainer_class = _trainer_class(data, options, counter, fast_loss)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="synthledger-lora-") as scratch:
        trainer = trainer_class(
            model=model,
            args=training_arguments(options, device, Path(scratch)),
            train_dataset=features,
            data_collator=PadCollator(tokenizer.pad_token_id),
            callbacks=[callback],
        )
        trainer.remove_callback(PrinterCallback)  # our callback reports; no raw dicts on stdout
        started = time.perf_counter()
        try:
            result = trainer.train()
        finally:
            callback.close()
        wall = time.perf_counter() - started
    real_tokens, padded_tokens = counter.close()
    bf16 = bool(trainer.args.bf16)
    artifacts = _save(model, tokenizer, out, callback.curve, {
        "student": options.student, "student_path": student, "options": options.model_dump(mode="json"),
        "dataset_hash": data_hash, "rows": data.total, "used": len(data.rows), "dropped": data.dropped,
        "truncated": data.truncated, "device": device, "bf16": bf16}, options.merge)
    curve = callback.curve
    return {
        "final_loss": curve[-1]["loss"] if curve else float(result.training_loss),
        "mean_loss": float(result.training_loss),
        "steps": int(result.global_step),
        "epochs": float(trainer.state.epoch or 0.0),
        "tokens": real_tokens,
        "padded_tokens": padded_tokens,
        "padding_fraction": round(1 - real_tokens / padded_tokens, 4) if padded_tokens else 0.0,
        "tokens_per_s": real_tokens / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "device": device,
        "bf16": bf16,
        "fast_loss": fast_loss,
        "rows": data.total,
        "used": len(data.rows),
        "dropped": data.dropped,
        "truncated": data.truncated,
        "artifacts": artifacts,
    }


def _trainer_class(data: EncodedDataset, options: LoraSFTOptions, counter: TokenCounter, fast_loss: bool) -> Any:
    """A Trainer that draws batches of similar length (less padding) and, where the model allows,
    computes the loss on labelled positions only (no logits for the prompt)."""
    from transformers import Trainer

    from .fast_loss import labelled_positions_loss
    from .sampler import GroupedBatchOrder

    grouped = GroupedBatchOrder([len(r.input_ids) for r in data.rows], options.batch_size, options.seed)

    class GroupedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return grouped if options.group_by_length else super()._get_train_sampler(train_dataset)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if model.training:
                counter.add(inputs)
            # Only for the unwrapped model: a DDP/compiled wrapper must see its own forward.
            if fast_loss and not return_outputs and model is self.model:
                return labelled_positions_loss(model, inputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return GroupedTrainer


def _save(model: Any, tokenizer: Any, out: Path, curve: list[dict[str, Any]], facts: dict[str, Any],
          merge: bool) -> dict[str, str]:
    """The adapter, its loss curve, the training config (what a reader needs to reproduce it) and,
    when asked, the merged model; returns where each went."""
    import peft
    import torch
    import transformers

    from .reporting import write_loss_curve

    adapter_dir = out / "adapter"
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    artifacts: dict[str, str] = {"adapter": str(adapter_dir)}
    artifacts.update(write_loss_curve(curve, out))
    config_path = out / "training_config.json"
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    config_path.write_text(json.dumps({**facts, "versions": versions}, indent=2) + "\n")
    artifacts["training_config"] = str(config_path)
    if merge:
        merged_dir = out / "merged"
        merged = model.merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(str(merged_dir))
        tokenizer.save_pretrained(str(merged_dir))
        artifacts["merged"] = str(merged_dir)
    return artifacts
