"""Options of the LoRA SFT trainer: torch-free, so a config can be validated before anything heavy
is imported (and so `synthledger check` works on a machine without the train extra)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from synthledger.engine.api import PluginOptions
from synthledger.engine.errors import SynthledgerError


class TrainingError(SynthledgerError, RuntimeError):
    """Training cannot start or did not finish; the message says why."""


class LoraSFTOptions(PluginOptions):
    student: str = "smollm2"
    epochs: float = Field(default=3, gt=0)
    learning_rate: float = Field(default=4e-5, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: float = Field(default=32, gt=0)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    max_length: int = Field(default=1536, ge=8)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    seed: int = 0
    overlength: Literal["truncate", "drop"] = "truncate"
    merge: bool = False
    bf16: bool | Literal["auto"] = "auto"
    device: str = "auto"
    max_steps: int | None = Field(default=None, ge=1)
    # None: every step for runs under 50 steps (a short run's curve would be a point or two), else
    # every 10. A number is used as given.
    logging_steps: int | None = Field(default=None, ge=1)
    group_by_length: bool = True  # batches of similar lengths: far less padding to compute
    fast_loss: bool = True  # project only the labelled positions onto the vocabulary (fast_loss.py)

    @field_validator("lr_scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        known = {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt"}
        if value not in known:
            raise ValueError(f"unknown lr_scheduler {value!r} (known: {', '.join(sorted(known))})")
        return value

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("target_modules is empty: give 'all-linear' or module names such as ['q_proj', 'v_proj']")
        return value
