"""What a request will probably count against each token limit, for pacing.

A request's estimate is an upper bound: its prompt's UTF-8 bytes (no tokenizer counts fewer tokens)
and its `max_tokens`. The budget needs that bound; pacing by it loses most of a token limit.
- A provider counts the prompt's tokens, about a quarter of its bytes in English. Charged at the
  bound, a request that counts 548 tokens took 2,064 of the limit until its answer came back: with
  2 s of latency every request of the last second was still out, and a run used 0.29 of a
  tokens-per-minute limit (OpenAI's, which counts the prompt and `max_tokens`).
- Anthropic counts `max_tokens` against its output limit while a reply is written and corrects it
  to what was written. Charged at the cap and refunded at the end, the refund was lost whenever it
  came back after the next release was due (the schedule cannot move into the past: that would be
  a burst): 0.63-0.83 of a 1,000 tokens/s limit at `max_tokens` 64 and replies of ~31.

So pacing charges what is likely: the prompt at the provider's count per byte so far (a running
mean, with a twentieth more for the provider's own estimate at admission, which reads characters), and
the output at what replies of this `max_tokens` have been writing (a running mean for each
`max_tokens`, so a strategy's short answers and an augmenter's long questions are kept apart). A
combined tokens-per-minute limit keeps `max_tokens` whole: OpenAI counts it so. Until a reply is
known, the bound. The settlement corrects every charge to what the provider counted, so the
average stays exact: a count above the likely one only delays the next release. The per-second
window (token_window.py) counts a reply in flight at its `max_tokens`, as the providers do, and the
prompt as likely: no second is filled beyond its share by what is still being written.
"""

from __future__ import annotations

import math
from collections import deque

from .tokens import Tokens

__all__ = ["LikelyTokens"]

_WEIGHT = 0.1  # each new reply's weight in a running mean
# The prompt is charged this much above the mean count per byte: the provider estimates a prompt's
# tokens from its characters when it admits it, before any tokenizer has counted them.
PROMPT_MARGIN = 1.05
ADMISSION_BYTES_PER_TOKEN = 4  # see `at_admission`


def _scaled(bound: int, ratio: float | None, margin: float = 1.0) -> int:
    if ratio is None or bound <= 0:
        return bound
    return min(bound, max(1, math.ceil(bound * ratio * margin)))


class LikelyTokens:
    def __init__(self) -> None:
        self._prompt: float | None = None  # counted prompt tokens / the prompt's bound
        self._output: dict[int, float] = {}  # written / max_tokens, by max_tokens
        self._charged: dict[Tokens, deque[Tokens]] = {}  # by estimate, oldest first

    def likely(self, est: Tokens) -> Tokens:
        """What `est` (prompt bound in `input`, `max_tokens` in `output`) will probably count once
        its reply is written: what the average pace charges."""
        return self._with(est, _scaled(est.output, self._output.get(est.output)))

    def at_admission(self, est: Tokens) -> Tokens:
        """What the provider probably counts while the reply is being written (what a one-second
        window holds): the output at `max_tokens`, as OpenAI and Anthropic both count it then, and the
        prompt at no less than a token per 4 bytes, OpenAI's rule of thumb for its estimate from the
        characters (a prompt of ASCII prose counts fewer tokens once a tokenizer has read it)."""
        return self._with(est, est.output, floor=math.ceil(est.input / ADMISSION_BYTES_PER_TOKEN))

    def _with(self, est: Tokens, output: int, floor: int = 0) -> Tokens:
        prompt = max(floor, _scaled(est.input, self._prompt, PROMPT_MARGIN))
        if prompt == est.input and output == est.output:
            return est
        return Tokens(est.total - est.input + prompt, prompt, output)

    def charged(self, est: Tokens, likely: Tokens) -> None:
        """`likely` was charged for a request estimated at `est` (see `settle`)."""
        if likely != est:
            self._charged.setdefault(est, deque()).append(likely)

    def settle(self, est: Tokens, counted: Tokens | None) -> Tokens:
        """What was charged for the oldest unsettled request estimated at `est`; learns from what
        the provider `counted` (None: refused, which says nothing of what it would have counted)."""
        if counted is not None:
            if est.input > 0:
                ratio = min(1.0, max(0, counted.total - est.output) / est.input)  # (the prompt, as counted)
                self._prompt = ratio if self._prompt is None else (1 - _WEIGHT) * self._prompt + _WEIGHT * ratio
            if est.output > 0:
                ratio, mean = min(1.0, counted.output / est.output), self._output.get(est.output)
                self._output[est.output] = ratio if mean is None else (1 - _WEIGHT) * mean + _WEIGHT * ratio
        queue = self._charged.get(est)
        if not queue:
            return est
        value = queue.popleft()
        if not queue:
            del self._charged[est]
        return value
