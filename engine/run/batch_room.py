"""Room at the provider for another batch: OpenAI's enqueued token limit, and every provider's cap
on the bytes of one batch.

OpenAI caps the prompt tokens of a model's batches that have not ended (90,000 for gpt-4o at tier 1,
2,000,000 for gpt-4o-mini). A batch over the cap is created, then fails at validation with
`token_limit_exceeded`: "Please try again once some in_progress batches have been completed". That
is no verdict on its requests, and its queries go into the next batch without using up their
attempts (see BatchQueue). From then on the cap is known: batches are sized to fit it, and a batch
waits while those running leave it no room. Where the provider names no figure, a batch refused
beside others waits for one of them to end, and one refused alone is halved.

A batch is also cut to the bytes the provider takes in one upload (BatchAPI.max_bytes). One refused
as too large all the same (a gateway in front that takes less) is halved, by requests and by bytes,
until one goes through.

Prompt tokens here are typical counts, not the reservations' upper bounds (a token per byte of
UTF-8): English runs about four bytes a token, and sizing by the bound would make batches four
times smaller than they need be. A batch that still goes over is refused once more, and halved.
"""

from __future__ import annotations

import anyio

CAP_SHARE = 0.9  # of the provider's cap that batches are sized to: it counts with its own tokenizer
BYTES_PER_TOKEN = 4  # a typical token, against the bound's one per byte


def typical_tokens(bound_tokens: int) -> float:
    return bound_tokens / BYTES_PER_TOKEN


class BatchRoom:
    def __init__(self) -> None:
        self.limit: int | None = None  # the provider's enqueued token limit, once it named it
        self.cap: int | None = None  # most requests per batch, once a batch was refused alone
        self.byte_cap: int | None = None  # most bytes per batch, once one was refused as too large
        self._running: dict[str, float] = {}  # batches not ended -> their typical prompt tokens
        self._hold = False
        self._closed = False
        self._ended = anyio.Event()

    @property
    def running(self) -> int:
        return len(self._running)

    def size(self, configured: int) -> int:
        return configured if self.cap is None else min(configured, self.cap)

    def max_bytes(self, provider_cap: int) -> int:
        return provider_cap if self.byte_cap is None else min(provider_cap, self.byte_cap)

    def too_large(self, n: int, nbytes: int) -> str | None:
        """A batch of `n` requests and `nbytes` was refused as too large: later ones are half its
        size, in words; None when it held one request (it is too large alone)."""
        if n <= 1:
            return None
        self.cap = max(1, n // 2) if self.cap is None else min(self.cap, max(1, n // 2))
        self.byte_cap = max(1, nbytes // 2) if self.byte_cap is None else min(self.byte_cap, max(1, nbytes // 2))
        return f"batches of at most {self.cap} requests and {self.byte_cap:,} bytes from now on"

    def started(self, key: str, tokens: float) -> None:
        self._running[key] = tokens

    def ended(self, key: str) -> None:
        self._running.pop(key, None)
        ended, self._ended = self._ended, anyio.Event()
        ended.set()

    def close(self) -> None:
        """The run is stopping: nobody waits for room any more (a batch may run for hours)."""
        self._closed = True
        self._ended.set()

    async def wait(self, tokens: float) -> None:
        """Before a batch of `tokens`: while the batches running leave it no room."""
        while not self._closed and self._running and (self._hold or (
                self.limit is not None and sum(self._running.values()) + tokens > CAP_SHARE * self.limit)):
            await self._ended.wait()
        self._hold = False

    def refused(self, key: str, n: int, limit: int | None) -> str | None:
        """Batch `key` of `n` requests went over the provider's limit (`limit` when it named it).
        Returns what changes, in words, or None when nothing can: a batch of one, alone, is
        refused for itself."""
        tokens = self._running.get(key, 0.0)
        alone = len(self._running) <= 1
        if limit is not None:
            self.limit = limit
        fits = n
        if limit is not None and tokens > CAP_SHARE * limit:
            fits = max(1, int(n * CAP_SHARE * limit / tokens))
        elif alone:  # under the cap by our count, and refused alone: the provider counts more
            fits = max(1, n // 2)
        if alone and fits >= n:
            return None
        said = []
        if fits < n:
            self.cap = fits if self.cap is None else min(self.cap, fits)
            said.append(f"batches of at most {self.cap} from now on")
        if not alone:
            self._hold = self.limit is None  # a known limit is waited on by its figure
            said.append("a batch waits while those running leave it no room")
        return " and ".join(said)
