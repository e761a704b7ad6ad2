"""Built-in trainers. Registration imports nothing heavy: torch, transformers and peft load only
when a trainer actually trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

from synthledger.engine.hookspecs import hookimpl

from .options import LoraSFTOptions, TrainingError

__all__ = ["LoraSFTOptions", "LoraSFTTrainer", "TrainingError"]


class LoraSFTTrainer:
    """`lora_sft`: LoRA supervised fine-tuning of a causal LM on chat rows (see lora_sft.py)."""

    name: ClassVar[str] = "lora_sft"
    Options: ClassVar[type[LoraSFTOptions]] = LoraSFTOptions

    def __init__(self, options: LoraSFTOptions | dict[str, Any] | None = None) -> None:
        self.options = options if isinstance(options, LoraSFTOptions) else LoraSFTOptions.model_validate(options or {})

    def train(self, rows: list[dict[str, Any]], out_dir: Path | str,
              on_event: Callable[[str, dict[str, Any]], None] | None = None, progress: bool = True) -> dict[str, Any]:
        from .lora_sft import train

        return train(rows, self.options, out_dir, on_event, progress)


@hookimpl
def register_trainers(register):
    register(LoraSFTTrainer.name, LoraSFTTrainer)
