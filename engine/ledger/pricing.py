"""Dollar prices per million tokens. A built-in table for common hosted models; `[pricing]` in a
run config overrides or extends it. A dollar budget on a model with no known price is refused up
front rather than silently counted as free."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPrice:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000


BUILTIN: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "claude-3-5-haiku-latest": ModelPrice(0.80, 4.00),
    "claude-3-5-sonnet-latest": ModelPrice(3.00, 15.00),
}

FREE = ModelPrice(0.0, 0.0)


def price_for(model: str, provider: str, overrides: dict[str, ModelPrice]) -> ModelPrice | None:
    if model in overrides:
        return overrides[model]
    if provider == "local":
        return FREE
    return BUILTIN.get(model)
