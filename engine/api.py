"""What a plugin author imports: the contracts of strategies, verifiers, tasks, seed sources,
teachers, trainers and evaluators, and the errors they may raise.

A strategy is a small class: it lays out a deterministic, lazy plan of items, and turns one item
into a sample by asking models through `ctx.ask(...)`. Chaining (rephrase, then answer) is plain
`await` in Python. The engine behind `ctx` does the budgeting, rate limiting, retries, caching of
settled queries and event recording, so a strategy never sees any of that.

A teacher (a model provider) turns a `ChatRequest` into a `Completion` or raises `TeacherError`
with one of a small set of failure kinds, plus the one fact the budget ledger needs: could the
failed attempt have been billed? Providers differ in SDKs, headers and error shapes; the
scheduler must not care.

Everything here is stable for plugins; `synthledger.engine.strategy` and `.teacher` re-export it.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .errors import BudgetExhausted, FailureKind, QueryFailed, SeedError, TeacherError, TeacherSetupError
from .proxies import environment_proxy, environment_proxy_source, without_credentials
from .scheduler.headers import (RateLimitInfo, header_count, parse_reset, parse_retry_after, rate_limits_from_headers,
                                wait_seconds)

__all__ = [
    "BudgetExhausted", "ChatRequest", "Completion", "Context", "Evaluator", "FailureKind", "PlanItem",
    "PluginOptions", "QueryFailed", "RateLimitInfo", "Sample", "Seed", "SeedError", "SeedSource", "Strategy",
    "Task", "Teacher", "TeacherError", "TeacherSetupError", "Trainer", "Usage", "Verdict", "Verifier", "draw_subset",
    "header_count", "parse_reset", "parse_retry_after", "rate_limits_from_headers", "utf8_prompt_bound",
    "wait_seconds", "environment_proxy", "environment_proxy_source", "without_credentials",
]


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
        group: "Mapping[int, str] | Iterable[int] | None" = None,
    ) -> str:
        """Send one query (one completion) to the model playing `role` and return its text.

        Identical queries already settled in this run are answered from the store. `group` lists
        the sample indices of this same prompt that the strategy will also ask for (optionally
        mapped to the plan item each belongs to): where the provider supports it they go out as one
        `n` request, the prompt paid once, and each later ask finds its sample already settled."""
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

    def start_warnings(self, seeds: list[Seed]) -> list[str]:
        """Lines to tell the user once, before the run starts, about checks this verifier cannot make
        on these seeds (a verdict that silently accepts everything is worse than none)."""
        return []

    @abstractmethod
    async def verify(self, sample: Sample, ctx: Context) -> Verdict: ...


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


# ---- teachers ---------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    """One call to a chat model. `n` > 1 asks for several samples of the same prompt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int = Field(gt=0)
    temperature: float = 0.7
    top_p: float | None = None
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    # How long to wait for this answer; None: the teacher's configured `timeout_s`. The engine sets it
    # longer on a retry after a timeout (a model slower than the timeout would otherwise be paid for
    # at every attempt and answer none); a teacher passes it to its client. Never sent to the model.
    timeout_s: float | None = Field(default=None, gt=0)


@dataclass
class Usage:
    input_tokens: int = 0  # every prompt token, cached ones included
    output_tokens: int = 0
    cached_input_tokens: int = 0  # of input_tokens, those read from the provider's prompt cache


@dataclass
class Completion:
    texts: list[str]
    usage: Usage
    finish_reasons: list[str | None] = field(default_factory=list)
    rate_limits: RateLimitInfo | None = None
    raw_model: str | None = None


@runtime_checkable
class Teacher(Protocol):
    """A model endpoint. Implementations must be safe to call concurrently from one event loop."""

    provider: str

    async def complete(self, request: ChatRequest) -> Completion: ...

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        """A number of prompt tokens the provider will not exceed for this request.

        The budget reserves this before dispatch, so it must be an upper bound, not a guess."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class BatchView:
    """A provider batch as last polled: its status in the provider's words, whether it ended (no
    result will change any more), its request counts, and why it failed when it did."""

    status: str
    ended: bool
    counts: dict[str, int] = field(default_factory=dict)
    message: str = ""
    # Failed for the tokens the provider already holds queued (OpenAI's enqueued token limit), not
    # for its requests; `token_limit` is that limit where the provider said it.
    over_token_limit: bool = False
    token_limit: int | None = None


# How far a provider's clock may lag ours when a batch is looked up by when it was created.
BATCH_CLOCK_SKEW_S = 60.0
# A key of BatchAPI.results: the outcome of every request the results do not name, when some of
# them could not be read (a line cut off): those requests may have run and been billed.
UNREADABLE = "*"


@runtime_checkable
class BatchAPI(Protocol):
    """A provider's batch API (`[teacher] batch = true`). Requests are identified by our query ids
    (`custom_id`); `key` is our name for the batch, recorded before anything is sent, so that a
    resumed run can find a batch whose creation it did not live to record."""

    size: int  # most requests per batch
    max_bytes: int  # most bytes one batch may upload (OpenAI: a 200 MB file; Anthropic: a 256 MB request)
    wait_s: float  # submit a partial batch after this long without a new request
    poll_s: float  # seconds between polls

    def request_bytes(self, cid: str, request: ChatRequest) -> int:
        """What this request adds to its batch's upload, at most: batches are cut to `max_bytes`
        by it, since the provider refuses a larger one whole."""
        ...

    async def upload(self, key: str, requests: list[tuple[str, ChatRequest]]) -> str | None:
        """Stage the requests (OpenAI: upload the input file) and return its id, or None."""
        ...

    async def create(self, key: str, file_id: str | None, requests: list[tuple[str, ChatRequest]]) -> str:
        """Create the batch; returns the provider's batch id."""
        ...

    async def find(self, key: str, file_id: str | None, since: float, count: int) -> list[str]:
        """The ids of the batches that may be the one created for `key` (after wall time `since`,
        less BATCH_CLOCK_SKEW_S, with `count` requests): the one that matches exactly where the
        provider keeps our key, else every batch that fits. The engine drops those it knows; none
        left means the batch was never created, and several mean it cannot tell."""
        ...

    async def poll(self, batch_id: str) -> BatchView: ...

    async def results(self, batch_id: str) -> "dict[str, Completion | TeacherError]":
        """Each finished request's completion or error by custom id; requests that never ran
        (expired, cancelled) are absent or a TeacherError of kind EXPIRED. A result that cannot be
        read is a MALFORMED error (maybe billed) under its custom id where that can be read, else
        under UNREADABLE. A TeacherError means the results could not be fetched (tried again)."""
        ...

    async def cancel(self, batch_id: str) -> None: ...


def utf8_prompt_bound(messages: tuple[dict[str, str], ...] | list[dict[str, Any]]) -> int:
    """An upper bound on prompt tokens for byte-level BPE tokenizers: no token is shorter than one
    byte, plus a generous allowance for the chat template's special tokens."""
    total = 16
    for m in messages:
        total += len(str(m.get("content", "")).encode("utf-8")) + len(str(m.get("role", ""))) + 8
    return total


# ---- students ---------------------------------------------------------------------------------

OnEvent = Callable[[str, dict[str, Any]], None]  # (event type, payload): recorded on the train/eval run


class Trainer(Protocol):
    """Trains a student on chat rows (`{"messages": [...], "metadata": {...}}`); a class with `name`
    and `Options`, built as `cls(options)`. Heavy imports belong inside `train`."""

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]

    def train(self, rows: list[dict[str, Any]], out_dir: Path | str, on_event: OnEvent | None = None,
              progress: bool = True) -> dict[str, Any]: ...


class Evaluator(Protocol):
    """Scores a model on a held-out set; built as `cls(options)` with the `heldout`/`limit` options."""

    name: ClassVar[str]
    Options: ClassVar[type[PluginOptions]]

    def heldout(self, exclude_questions: set[str] | None = None) -> list[dict[str, str]]: ...

    def evaluate(self, model_or_adapter: str, examples: list[dict[str, str]], task: Task, out_path: Path | str,
                 on_event: OnEvent | None = None, progress: bool = True) -> dict[str, Any]: ...
