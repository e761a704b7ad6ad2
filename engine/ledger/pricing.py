"""Dollar prices per million tokens, and where each came from.

The order, first match wins:
1. `[pricing."model"]` in the run config (input/output, optionally cached input);
2. a local model costs nothing;
3. `genai-prices` (its data ships with the package and works offline): by provider for
   `openai`/`anthropic` (then by model name alone), by the endpoint's URL for `openai-compatible`
   (a self-hosted server at a private address matches nothing, so it is not priced as the hosted
   model of that name);
4. if `genai-prices` is not installed, a small built-in table of hosted models.

A dollar budget on a model with no known price is refused up front rather than silently counted
as free. The price a run used is recorded in its events (see the runner), so a later price change
never rewrites what a finished run cost.

Cached input tokens (a provider's prompt cache) are billed at their own, lower price where the
provider reports them; worst-case reservations use the full input price, which bounds both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelPrice:
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None  # None: cached input costs what input costs
    source: str = "config"

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """Dollars for one call; `cached_input_tokens` are part of `input_tokens`."""
        cached = min(max(cached_input_tokens, 0), input_tokens) if self.cached_input_per_mtok is not None else 0
        return ((input_tokens - cached) * self.input_per_mtok + cached * (self.cached_input_per_mtok or 0.0)
                + output_tokens * self.output_per_mtok) / 1_000_000

    def scaled(self, factor: float, why: str) -> "ModelPrice":
        """Every rate times `factor` (a provider's batch discount), the reason added to the source."""
        cached = None if self.cached_input_per_mtok is None else self.cached_input_per_mtok * factor
        return ModelPrice(self.input_per_mtok * factor, self.output_per_mtok * factor, cached,
                          f"{self.source}, {why} x{factor:g}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


BUILTIN: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.60, 0.075, "built-in table"),
    "gpt-4o": ModelPrice(2.50, 10.00, 1.25, "built-in table"),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60, 0.10, "built-in table"),
    "gpt-4.1": ModelPrice(2.00, 8.00, 0.50, "built-in table"),
    "claude-3-5-haiku-latest": ModelPrice(0.80, 4.00, 0.08, "built-in table"),
    "claude-3-5-sonnet-latest": ModelPrice(3.00, 15.00, 0.30, "built-in table"),
}

FREE = ModelPrice(0.0, 0.0, None, "local model")
_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic"}


def _highest(value: Any) -> float | None:
    """A genai-prices price as one number: tiered prices (by prompt size) at their highest tier, so
    a budget is never under-counted."""
    if value is None:
        return None
    tiers = getattr(value, "tiers", None)
    if tiers is not None:
        return float(max([value.base, *(t.price for t in tiers)]))
    return float(value)


def _private_address(url: str) -> bool:
    """A server on this machine or a private network: no hosted provider's price applies to it."""
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.is_private or addr.is_loopback or addr.is_link_local


def _from_genai_prices(model: str, provider: str, base_url: str | None) -> ModelPrice | None:
    """The price genai-prices knows for this model at this provider, or None (also if not installed).
    A private address is answered without loading genai-prices, which costs a third of a second of
    every run's start-up and could only say "unknown" there."""
    if provider in _PROVIDER_IDS:
        # The hosted API of that provider; a model name it does not list (a gateway serving another
        # vendor's model through this protocol) is looked up by name alone.
        tries: list[dict[str, str]] = [{"provider_id": _PROVIDER_IDS[provider]}, {}]
    elif base_url and not _private_address(base_url):
        tries = [{"provider_api_url": base_url}]
    else:
        return None
    try:
        import genai_prices
    except ImportError:
        return None
    calc = None
    for where in tries:
        try:
            calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=0, output_tokens=0), model, **where)
            break
        except (LookupError, ValueError):
            continue
    if calc is None:
        return None
    mp = calc.model_price
    inp, out = _highest(mp.input_mtok), _highest(mp.output_mtok)
    if inp is None or out is None:
        return None
    version = getattr(genai_prices, "__version__", "?")
    return ModelPrice(inp, out, _highest(mp.cache_read_mtok),
                      f"genai-prices {version} ({calc.provider.id}/{calc.model.id})")


def price_for(model: str, provider: str, overrides: dict[str, ModelPrice],
              base_url: str | None = None) -> ModelPrice | None:
    if model in overrides:
        return overrides[model]
    if provider == "local":
        return FREE
    found = _from_genai_prices(model, provider, base_url)
    if found is not None or provider not in _PROVIDER_IDS:
        return found
    try:
        import genai_prices  # noqa: F401 - installed: its answer (none) stands
        return None
    except ImportError:
        return BUILTIN.get(model)
