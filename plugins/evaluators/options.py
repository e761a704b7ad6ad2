"""Options of the accuracy evaluator (torch-free, validated with the rest of a config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthledger.engine.api import PluginOptions


class AccuracyOptions(PluginOptions):
    heldout: str = "reasoning-gym:gsm_symbolic"  # see heldout.load_heldout
    limit: int | None = Field(default=None, ge=1)
    on_overlap: Literal["error", "drop"] = "error"
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=512, ge=1)
    device: str = "auto"
    bf16: bool | Literal["auto"] = "auto"
    system_prompt: str | None = None
    # Ask as the exported training rows ask (the bare question: engine/export_formats.chat_record).
    # Set true to append the task's answer-format instruction, e.g. to score an untuned base model.
    include_instruction: bool = False
