"""Anthropic's separate input and output token limits, for the test teacher server.

Anthropic limits input tokens per minute (ITPM: the prompt, cache reads excluded) and output tokens
per minute (OTPM) apart, and its OTPM is the lowest of its limits on most tiers. Output tokens are
charged at `max_tokens` when a request arrives and corrected to what was written when it ends, so a
client that asks for more than it writes gets the difference back. The headers name each limit
(`anthropic-ratelimit-input-tokens-*`, `-output-tokens-*`), and `anthropic-ratelimit-tokens-*`
repeats whichever has fewer tokens left, as Anthropic's do. Both are enforced over the same exact
sliding window as the server's request limit (see ratelimit.py).
"""

from __future__ import annotations

from collections import deque

from .ratelimit import rfc3339_after, wait_to_free


class TokenWindow:
    """One token limit over a sliding window; a charge can be corrected while it is in the window."""

    def __init__(self, per_minute: float, window_s: float) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self.limit = max(1, int(per_minute * window_s / 60.0))
        self._charges: deque[list[float]] = deque()  # [time, tokens, still counted (1.0) or not]
        self._used = 0.0

    def _expire(self, now: float) -> None:
        while self._charges and self._charges[0][0] <= now - self.window_s:
            charge = self._charges.popleft()
            self._used -= charge[1]
            charge[2] = 0.0

    def wait(self, tokens: int, now: float) -> float:
        """Seconds until `tokens` more fit (0: they fit now)."""
        self._expire(now)
        need = self._used + tokens - self.limit
        return 0.0 if need <= 0 else wait_to_free(self._charges, need, self.window_s, now)

    def charge(self, tokens: int, now: float) -> list[float]:
        entry = [now, float(tokens), 1.0]
        self._charges.append(entry)
        self._used += tokens
        return entry

    def correct(self, entry: list[float], tokens: int) -> None:
        if entry[2]:
            self._used += tokens - entry[1]
        entry[1] = float(tokens)

    def left(self, now: float) -> int:
        self._expire(now)
        return max(0, int(self.limit - self._used))


class SplitTokenLimits:
    """ITPM and OTPM (either may be None); `active` when one is set."""

    def __init__(self, itpm: float | None, otpm: float | None, window_s: float) -> None:
        self.configure(itpm, otpm, window_s)

    def configure(self, itpm: float | None, otpm: float | None, window_s: float) -> None:
        self.input = TokenWindow(itpm, window_s) if itpm else None
        self.output = TokenWindow(otpm, window_s) if otpm else None
        self.window_s = window_s

    @property
    def active(self) -> bool:
        return self.input is not None or self.output is not None

    def wait(self, input_tokens: int, output_cap: int, now: float) -> float:
        waits = [0.0]
        if self.input is not None:
            waits.append(self.input.wait(input_tokens, now))
        if self.output is not None:
            waits.append(self.output.wait(output_cap, now))
        return max(waits)

    def charge(self, input_tokens: int, output_cap: int, now: float) -> list[float] | None:
        """Charge an admitted request; returns its output charge, to correct when it ends."""
        if self.input is not None:
            self.input.charge(input_tokens, now)
        return self.output.charge(output_cap, now) if self.output is not None else None

    def correct(self, entry: list[float] | None, output_tokens: int) -> None:
        if entry is not None and self.output is not None:
            self.output.correct(entry, output_tokens)

    def headers(self, now: float) -> dict[str, str]:
        """Per minute, as Anthropic announces them; resets as RFC 3339 instants."""
        out: dict[str, str] = {}
        scale = 60.0 / self.window_s
        stamp = rfc3339_after(self.window_s)
        fewest: tuple[int, int] | None = None
        for name, window in (("input-tokens", self.input), ("output-tokens", self.output)):
            if window is None:
                continue
            left = int(window.left(now) * scale)
            out[f"anthropic-ratelimit-{name}-limit"] = str(int(window.per_minute))
            out[f"anthropic-ratelimit-{name}-remaining"] = str(left)
            out[f"anthropic-ratelimit-{name}-reset"] = stamp
            if fewest is None or left < fewest[1]:
                fewest = (int(window.per_minute), left)
        if fewest is not None:  # the most restrictive of the two, as Anthropic's tokens-* headers
            out["anthropic-ratelimit-tokens-limit"] = str(fewest[0])
            out["anthropic-ratelimit-tokens-remaining"] = str(fewest[1])
            out["anthropic-ratelimit-tokens-reset"] = stamp
        return out
