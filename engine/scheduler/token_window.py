"""Keep each token limit's one-second share over the requests actually sent.

The limiter paces tokens on average (GCRA): at 60,000 tokens per minute, requests of 550 tokens
(a prompt and its `max_tokens`) go out every 0.55 s. A provider that enforces the limit per second
(OpenAI documents that a per-minute limit may be enforced over shorter periods) counts whole
requests in any one-second window: two of them are 1,100 tokens, over its 1,000, so the second is
refused. Its tokens were refunded, which let the next request go at once into the same full window:
a storm of 429s (exploratory QA: 407 for 10 answers, and items failed after 24 attempts).

So a release also waits until the last second's sends leave room for it under the limit's share of
a second; a request larger than that share goes alone. An entry counts what its request will
likely count (likely_tokens.py), from its release until the request is on the wire, then from the
send (the run's first commit can hold a send for most of a second); it is corrected to what the
provider counted once that is known, except a refusal, which keeps its place: the refusal says the
window was full.

An entry leaves the window a little after one second from its send, as the send shaper's window
does (shaper.py): the provider's clock stamps a request when it arrives, and a send one second after
another can arrive less than a second after it when the earlier one was held up on the way. With
requests of a whole second's share each, that was a 429 for every such pair (CI: 4 in 14 sends).
So an entry counts up to WIRE_MARGIN_S longer, in proportion to its part of the limit's share:
jitter lets two sends overlap in the provider's window by about the tokens sent within it, which
for a steady stream of small requests is less than the slack the average pace leaves (a margin
there would only slow it), and for requests of a whole share each is a whole request.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_S = 1.0
WIRE_MARGIN_S = 0.020  # see the module docstring


@dataclass
class _Entry:
    at: float  # released, then sent
    tokens: int  # as likely (likely_tokens.py), then as the provider counted them
    key: int  # the request's estimate, by which `sent` and `settle` find it
    sent: bool = False
    settled: bool = False


class TokenWindows:
    def __init__(self, dimensions: tuple[str, ...]) -> None:
        self._entries: dict[str, deque[_Entry]] = {name: deque() for name in dimensions}

    def room_at(self, counts: dict[str, int], shares: dict[str, float], now: float, after: float | None = None
                ) -> float:
        """The earliest time (>= now, and >= `after`: when the average pace allows the request) a
        request counting `counts` fits every limit's share. Only what left the window by `now` is
        dropped: dropping by `after` lost sends that were still in it, and QA's n=2 requests, each
        over half a second's share, then went out 20 ms apart, nine in ten refused."""
        at = max(now, after if after is not None else now)
        for name, share in shares.items():
            need = counts.get(name, 0)
            if need <= 0:
                continue
            leaving = [(e.at + WINDOW_S + WIRE_MARGIN_S * min(1.0, e.tokens / share), e.tokens)
                       for e in self._expire(name, now)]
            still = [(t, n) for t, n in leaving if t > at]  # still in it at `at`
            used = sum(n for _, n in still)
            if used + need <= share:
                continue
            for t, n in sorted(still):  # the first to leave first
                used -= n
                if used + need <= share or used <= 0:
                    at = max(at, t)
                    break
        return at

    def add(self, estimated: dict[str, int], counts: dict[str, int], shares: dict[str, float], now: float) -> None:
        """A request `estimated` at these counts, likely to count `counts`, was released now."""
        for name in shares:
            if counts.get(name, 0) > 0:
                self._entries[name].append(_Entry(now, counts[name], estimated.get(name, 0)))

    def sent(self, estimated: dict[str, int], now: float) -> None:
        """The oldest release of a request so estimated, not yet sent, is on the wire now."""
        for name, entries in self._entries.items():
            e = next((e for e in entries if not e.sent and e.key == estimated.get(name)), None)
            if e is not None:
                e.at, e.sent = max(e.at, now), True

    def settle(self, name: str, estimated: int, actual: int) -> bool:
        """The oldest unsettled request `estimated` at these tokens counted `actual` at the provider;
        True when that left more room in the window."""
        if actual <= 0:  # refused: it keeps its place (see the module docstring)
            return False
        e = next((e for e in self._entries[name] if not e.settled and e.key == estimated), None)
        if e is None:
            return False
        freed = actual < e.tokens
        e.tokens, e.settled = actual, True
        return freed

    def _expire(self, name: str, now: float) -> deque[_Entry]:
        entries = self._entries[name]
        while entries and entries[0].at <= now - WINDOW_S - WIRE_MARGIN_S:
            entries.popleft()
        return entries
