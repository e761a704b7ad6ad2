"""What a generation strategy, a verifier, a task format and a seed source look like to the engine.

A strategy is a small class: it lays out a deterministic, lazy plan of items, and turns one item
into a sample by asking models through `ctx.ask(...)`. Chaining (rephrase, then answer) is plain
`await` in Python. The engine behind `ctx` does the budgeting, rate limiting, retries, caching of
settled queries and event recording, so a strategy never sees any of that.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Protocol

from pydantic import BaseModel, ConfigDict


class Seed(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    question: str
    answer: str | None = None
    meta: dict[str, Any] = {}


class PluginOptions(BaseModel):
    """Base for a plugin's own options (the extra keys of its config section). Unknown keys fail."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class PlanItem:
    """One unit of work. `key` must be unique within a run and stable across resumes."""

    key: str
    strategy: str
    seed: Seed
    sample_index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    question: str
    answer: str
    seed_id: str | None
    strategy: str
    reference: str | None = None  # ground-truth final answer when known (seed answer)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    accepted: bool
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class BudgetExhausted(Exception):
    """Raised by ctx.ask when the budget cannot cover another query of that role."""


class QueryFailed(Exception):
    """Raised by ctx.ask when a query was abandoned (attempts exhausted, or a non-retryable error)."""


class Context(Protocol):
    """What the engine offers a strategy or verifier while it works on one plan item."""

    task: "Task"
    seeds: list[Seed]

    async def ask(
        self,
        role: str,
        messages: list[dict[str, str]],
        *,
        purpose: str,
        sample_index: int = 0,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> str:
        """Send one query (one completion) to the model playing `role` and return its text.

        Identical queries already settled in this run are answered from the store."""
        ...

    def check_new_question(self, question: str) -> str | None:
        """Near-duplicate control: None if `question` is new (and remember it), else the reason."""
        ...

    def reject(self, reason: str, **details: Any) -> None:
        """Record that this item produced nothing usable, and why."""
        ...

    def rng(self, *salt: Any) -> random.Random:
        """A random generator determined by the run's seed, the item and `salt` (resume-stable)."""
        ...


class Task(ABC):
    """An answer format: how to ask for the final answer, find it again, and compare two."""

    name: ClassVar[str]
    instruction: ClassVar[str] = ""

    @abstractmethod
    def extract(self, text: str) -> str | None: ...

    @abstractmethod
    def equivalent(self, a: str | None, b: str | None) -> bool: ...

    @property
    def has_ground_truth(self) -> bool:
        return True


class Strategy(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    roles: ClassVar[tuple[str, ...]] = ("teacher",)

    def __init__(self, options: PluginOptions, seeds: list[Seed], task: Task, random_seed: int) -> None:
        self.options = options
        self.seeds = seeds
        self.task = task
        self.random_seed = random_seed

    @abstractmethod
    def plan(self) -> Iterator[PlanItem]:
        """Deterministic from (seeds, options, random_seed); lazy; may be endless (the budget ends it)."""

    def item_cost(self, item: PlanItem) -> dict[str, int]:
        """Worst-case queries per role for one item, so the engine starts only items it can finish."""
        return {role: 1 for role in self.roles}

    @abstractmethod
    async def run(self, item: PlanItem, ctx: Context) -> Sample | None:
        """Produce one sample (or None after ctx.reject)."""


class Verifier(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    roles: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: PluginOptions, task: Task) -> None:
        self.options = options
        self.task = task

    def item_cost(self) -> dict[str, int]:
        return {}

    @abstractmethod
    async def verify(self, sample: Sample, ctx: Context) -> Verdict: ...


class SeedError(ValueError):
    """A seed file or row is unusable; the message names the file and line."""


class SeedSource(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions, base_dir: str = ".") -> None:
        self.options = options
        self.base_dir = base_dir

    @abstractmethod
    def load(self) -> list[Seed]:
        """All seeds, in a stable order, validated; raise SeedError naming file and line."""


def draw_subset(seeds: list[Seed], size: int | None, random_seed: int) -> list[Seed]:
    """The research's seed-set size: a reproducible subset of `size` seeds (all when None)."""
    if size is None or size >= len(seeds):
        return list(seeds)
    rng = random.Random(f"seeds:{random_seed}")
    picked = sorted(rng.sample(range(len(seeds)), size))
    return [seeds[i] for i in picked]
