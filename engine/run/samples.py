"""Several queries answered by one request: k samples of one prompt as a single `n=k` call.

Each sample stays its own query in the ledger (its own reservation, settlement, resume), so the
request's cost has to be divided among them - exactly, so that the queries' amounts add up to the
request's to the token. The prompt, which the provider bills once, is split evenly; completion
tokens, which OpenAI reports only as a total, are split in proportion to each answer's length.
Worst cases are split the same way as actual usage, so a share never exceeds its reservation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ledger.ledger import Amount
from ..ledger.pricing import ModelPrice

MAX_N = 128  # OpenAI's cap on `n`


@dataclass
class Member:
    """One query of a request: its id, content key, sample index, item and attempt number."""

    qid: str
    key: str
    sample_index: int
    item: str
    attempt: int = 1
    first: bool = True  # never reserved before: its reservation records messages and params
    holding: bool = False
    worst: Amount | None = None
    spared: int = 0  # attempts that do not count toward max_attempts: batches refused for room, not for it


def split_evenly(total: int, k: int) -> list[int]:
    """`total` in k integer parts differing by at most one, the larger ones first."""
    if k == 1:  # a request of one sample: nearly every request
        return [total]
    base, extra = divmod(total, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def split_by_weight(total: int, weights: list[int]) -> list[int]:
    """`total` in integer parts proportional to `weights` (largest remainder), summing exactly."""
    w = sum(weights)
    if w <= 0:
        return split_evenly(total, len(weights))
    raw = [total * x / w for x in weights]
    parts = [int(r) for r in raw]
    left = total - sum(parts)
    for i in sorted(range(len(raw)), key=lambda i: (parts[i] - raw[i], i))[:left]:
        parts[i] += 1
    return parts


def shares(input_tokens: int, output_tokens: list[int], price: ModelPrice | None,
           cached_input_tokens: int = 0) -> list[Amount]:
    """Each query's amount of one shared request: the prompt (and its cached part) split evenly,
    outputs as given; cached prompt tokens cost the cached-input price."""
    ins = split_evenly(input_tokens, len(output_tokens))
    cached = split_evenly(cached_input_tokens, len(output_tokens))
    return [Amount(1, i, o, price.cost(i, o, c, prompt_tokens=input_tokens) if price else 0.0)
            for i, o, c in zip(ins, output_tokens, cached)]


def worst_shares(prompt_bound: int, max_tokens: int, k: int, price: ModelPrice | None) -> list[Amount]:
    """Each query's worst case in a request of k samples: the whole request can cost no more
    than one prompt and k full completions, and each actual share stays within its own."""
    return shares(prompt_bound, [max_tokens] * k, price)


def output_split(total: int, texts: list[str], cap: int) -> list[int]:
    """Completion tokens per answer, when the provider reports only their sum: by answer length,
    none above `cap` (max_tokens: no answer can be longer, and no share may exceed the worst case
    it settles, or the ledger would briefly hold more than the limit while the others settle)."""
    parts = split_by_weight(total, [max(1, len(t.split())) for t in texts])
    excess = sum(max(0, p - cap) for p in parts)
    parts = [min(p, cap) for p in parts]
    for i in range(len(parts)):  # total <= k * cap, so the excess always finds room
        room = min(excess, cap - parts[i])
        parts[i] += room
        excess -= room
    parts[0] += excess  # only if the provider reported more than k full answers: keep the sum exact
    return parts
