"""A length-grouped, still-random order of training rows.

Padding each batch to its longest row wastes compute in proportion to the length spread inside
the batch. Shuffling, then sorting within windows of a few batches, then shuffling the batches
keeps the randomness of SGD while making each batch's rows similar in length. (transformers'
own LengthGroupedSampler presents a small dataset in one sorted sweep, longest first.)
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence


class GroupedBatchOrder:
    """Yields row indices; every consecutive `batch_size` of them is one batch of similar rows."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, window_batches: int = 16) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = batch_size * window_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self, epoch: int) -> list[int]:
        rng = random.Random(f"{self.seed}:{epoch}")
        indices = list(range(len(self.lengths)))
        rng.shuffle(indices)
        batches: list[list[int]] = []
        for start in range(0, len(indices), self.window):
            window = sorted(indices[start:start + self.window], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(window[k:k + self.batch_size] for k in range(0, len(window), self.batch_size))
        # A short batch can only come last, or the data loader's batches would straddle two groups.
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        rng.shuffle(full)
        if full:  # the longest batch first: an out-of-memory shows up at step 1, not at the end
            longest = max(range(len(full)), key=lambda k: self.lengths[full[k][0]])
            full[0], full[longest] = full[longest], full[0]
        tail = sorted(i for b in short for i in b)
        return [i for b in full for i in b] + tail

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        self.epoch += 1  # in case nobody calls set_epoch, the next pass is still a new order
        return iter(order)
