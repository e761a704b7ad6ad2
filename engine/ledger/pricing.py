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
    # Prices by prompt size (genai-prices' "cliff" tiers): (start, input, output, cached input) -
    # a call whose prompt is over `start` tokens pays that tier's rates for all its tokens.
    tiers: tuple[tuple[int, float, float, float | None], ...] = ()

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
             prompt_tokens: int | None = None) -> float:
        """Dollars for one call; `cached_input_tokens` are part of `input_tokens`. Rising with each
        count (tiers only raise rates), so a worst case's cost bounds the call's. `prompt_tokens`:
        the whole request's prompt, which decides the tier, when this is one share of it."""
        inp, out, cached_rate = self.input_per_mtok, self.output_per_mtok, self.cached_input_per_mtok
        for start, t_in, t_out, t_cached in self.tiers:
            if (input_tokens if prompt_tokens is None else prompt_tokens) > start:
                inp, out, cached_rate = t_in, t_out, t_cached
        cached = min(max(cached_input_tokens, 0), input_tokens) if cached_rate is not None else 0
        return ((input_tokens - cached) * inp + cached * (cached_rate or 0.0) + output_tokens * out) / 1_000_000

    def scaled(self, factor: float, why: str) -> "ModelPrice":
        """Every rate times `factor` (a provider's batch discount), the reason added to the source."""
        def times(v: float | None) -> float | None:
            return None if v is None else v * factor
        tiers = tuple((start, i * factor, o * factor, times(c)) for start, i, o, c in self.tiers)
        return ModelPrice(self.input_per_mtok * factor, self.output_per_mtok * factor,
                          times(self.cached_input_per_mtok), f"{self.source}, {why} x{factor:g}", tiers)

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


def _base(value: Any) -> float | None:
    """A genai-prices price below its first tier (a plain price is its own base)."""
    if value is None:
        return None
    return float(value.base) if getattr(value, "tiers", None) is not None else float(value)


def _at(value: Any, tokens: int) -> float | None:
    """A genai-prices price for a prompt of `tokens` (the last tier it is over)."""
    if value is None or getattr(value, "tiers", None) is None:
        return _base(value)
    price = value.base
    for tier in sorted(value.tiers, key=lambda t: t.start):
        if tokens > tier.start:
            price = tier.price
    return float(price)


def _tiers(mp: Any) -> tuple[tuple[int, float, float, float | None], ...]:
    """Every tier start of the model's input, output and cache-read prices, with the three rates
    there (QA: the highest tier was charged for every call: 1.72x for claude-sonnet-4-5)."""
    starts = sorted({t.start for v in (mp.input_mtok, mp.output_mtok, mp.cache_read_mtok)
                     for t in (getattr(v, "tiers", None) or [])})
    out = []
    for start in starts:
        i, o = _at(mp.input_mtok, start + 1), _at(mp.output_mtok, start + 1)
        if i is not None and o is not None:
            out.append((int(start), i, o, _at(mp.cache_read_mtok, start + 1)))
    return tuple(out)


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
    inp, out = _base(mp.input_mtok), _base(mp.output_mtok)
    if inp is None or out is None:
        return None
    version = getattr(genai_prices, "__version__", "?")
    return ModelPrice(inp, out, _base(mp.cache_read_mtok),
                      f"genai-prices {version} ({calc.provider.id}/{calc.model.id})", _tiers(mp))


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
