"""The event vocabulary. Everything a run did is one of these, appended in order to the store.

Budget spent, progress and the dataset are folds over this stream, so fields here are the
contract between a run in progress, a resumed run, `audit` and `export`. Add fields with
defaults; never repurpose one. Bump SCHEMA_VERSION when a payload changes meaning.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .event_base import EventBase
from .experiment_events import (CellFailed, CellFinished, CellGenerated, CellStarted, ExperimentGrid,
                                ExperimentResult)

SCHEMA_VERSION = 1


_Event = EventBase  # every event class has `TYPE`, its type string (see event_base.py)


class Cost(BaseModel):
    """An amount in every budget dimension at once."""

    model_config = ConfigDict(extra="forbid")

    queries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0


class RunStarted(_Event):
    type: Literal["run_started"] = "run_started"
    config: dict[str, Any]
    config_hash: str
    plan_hash: str
    version: str
    kind: str = "generate"
    budget: dict[str, Any] = {}  # the BudgetSpec the ledger enforces (mix shares resolved)
    config_dir: str | None = None  # where relative paths in the config (seed files) resolve
    warnings: list[str] = []  # told to the user once at the start (e.g. a check that cannot be made)
    prices: dict[str, dict[str, Any]] = {}  # model -> the price this run counts usd with, and its source
    # The seed set as drawn ({id, question, answer} each), so export and training read it back
    # instead of loading the seeds again. Runs recorded before this field have None.
    seeds: list[dict[str, Any]] | None = None


def recorded_seeds(started: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The seeds a `run_started` payload recorded, or None for a run recorded before they were."""
    return started.get("seeds")


class RunResumed(_Event):
    type: Literal["run_resumed"] = "run_resumed"
    pid: int
    host: str | None = None
    owner: str | None = None  # the lease this session holds ("host:pid:token")
    previous_owner: str | None = None  # the lease it replaced, when it took over from a stale holder
    unsettled: list[str] = []
    config_hash: str = ""
    budget: dict[str, Any] = {}
    # The config this session runs with (a resume may change the budget), so a later
    # `generate --resume` without --config continues with what was last in effect.
    config: dict[str, Any] | None = None
    config_dir: str | None = None
    prices: dict[str, dict[str, Any]] = {}  # as in run_started: a resume may run with newer prices


class QueryReserved(_Event):
    type: Literal["query_reserved"] = "query_reserved"
    query_id: str
    attempt: int = 1
    key: str  # content hash of (provider, model, params, messages, sample index)
    role: str
    purpose: str
    strategy: str
    item: str
    provider: str
    model: str
    worst: Cost
    # Set on the first reservation of a query only (later attempts repeat nothing).
    messages: list[dict[str, str]] | None = None
    params: dict[str, Any] | None = None


class QueryDispatched(_Event):
    type: Literal["query_dispatched"] = "query_dispatched"
    query_id: str
    attempt: int
    # Set when several queries went out in one request (k samples as one `n=k` call: the first
    # query's id; a batch: the batch's key), so audit can put their shared usage back together.
    request: str | None = None


class AttemptFailed(_Event):
    type: Literal["attempt_failed"] = "attempt_failed"
    query_id: str
    attempt: int
    kind: str
    maybe_billed: bool
    message: str = ""
    status: int | None = None
    retry_after: float | None = None
    body_excerpt: str | None = None


class QuerySettled(_Event):
    type: Literal["query_settled"] = "query_settled"
    query_id: str
    attempt: int
    actual: Cost
    text: str
    finish_reason: str | None = None
    latency_s: float | None = None
    # For a query answered by a request it shared (n samples in one call): that request's id, its
    # number of samples and its whole usage; `actual` is this query's share of it.
    shared: dict[str, Any] | None = None
    cached_input_tokens: int = 0  # of actual.input_tokens, billed at the cached-input price


class ProviderFault(_Event):
    """The provider answered what no correct provider can (usage above what the request could use).
    The answer is still settled at the usage reported (that is what will be billed), and the run stops."""

    type: Literal["provider_fault"] = "provider_fault"
    query_id: str
    attempt: int
    kind: str  # usage_above_cap
    message: str
    reported: Cost
    cap: Cost


class QueryReused(_Event):
    """A query whose identity was already settled in this store (by another run), served from there.

    It counts toward this run's budget with the source's actual usage (the budget is a data budget:
    the run gets exactly what it would have bought) but nothing is paid for it. `source_run` and
    `source_seq` point at the `query_settled` event whose answer this is; `audit` checks them."""

    type: Literal["query_reused"] = "query_reused"
    query_id: str
    key: str
    role: str
    purpose: str
    strategy: str
    item: str
    provider: str
    model: str
    source_run: str
    source_seq: int
    actual: Cost
    text: str
    finish_reason: str | None = None


class QueryAbandoned(_Event):
    type: Literal["query_abandoned"] = "query_abandoned"
    query_id: str
    reason: str


class ShareHandedOver(_Event):
    """A mix part's plan ended and all its items finished, so its spend is final: it keeps exactly
    `spent` (what its share's scope counted) and the rest of its share goes to the parts of `to`
    (name -> fraction), in proportion. Folded by the ledger (shares.py): without it, a finite part
    that ended under its share left that rest unspent, and the run under its budget."""

    type: Literal["share_handed_over"] = "share_handed_over"
    strategy: str
    spent: Cost
    to: dict[str, float]


class SampleProposed(_Event):
    type: Literal["sample_proposed"] = "sample_proposed"
    sample_id: str
    item: str
    strategy: str
    seed_id: str | None
    question: str
    answer: str
    reference: str | None = None
    query_ids: list[str] = []
    roles: dict[str, str] = {}  # query id -> role
    models: dict[str, str] = {}  # role -> model
    meta: dict[str, Any] = {}
    # Why the teacher stopped writing the answer ("stop"; "length" = cut off at max_tokens; None when
    # no query wrote it, e.g. a seed's own answer), and the same for every query the sample used.
    finish_reason: str | None = None
    finish_reasons: dict[str, str | None] = {}
    # The query the answer came from (None: no query wrote it, e.g. a seed's own answer reused by a
    # rephrase), so an export names the model that wrote the answer. Absent in older runs.
    answer_query_id: str | None = None


class SampleAccepted(_Event):
    type: Literal["sample_accepted"] = "sample_accepted"
    sample_id: str
    reason: str = ""
    details: dict[str, Any] = {}
    query_ids: list[str] = []


class SampleRejected(_Event):
    type: Literal["sample_rejected"] = "sample_rejected"
    sample_id: str | None = None
    item: str
    strategy: str
    stage: str = "verification"  # question | check | verification | parse | failed | ... (strategy-defined)
    reason: str
    details: dict[str, Any] = {}
    question: str | None = None
    kind: str | None = None  # what `show` groups by ("truncated", "duplicate"); None: derived from reason


class RunWarning(_Event):
    """Something about the data the user should act on (a teacher that ignores sampling, answers that
    disagree with the references), said once per run, while it runs."""

    type: Literal["run_warning"] = "run_warning"
    kind: str
    message: str


class ItemDone(_Event):
    """Marks a plan item finished (whatever came of it), so resume skips it."""

    type: Literal["item_done"] = "item_done"
    item: str
    strategy: str
    outcome: Literal["accepted", "rejected", "failed", "budget"]


class QuestionAdmitted(_Event):
    """A generated question passed near-duplicate control; later questions are checked against it."""

    type: Literal["question_admitted"] = "question_admitted"
    item: str
    question: str


class RateAdjusted(_Event):
    """An endpoint's pacing changed in a way a user should see: limits learned from headers, a
    pause for 429s our pacing cannot explain, a slower pace while 429s persist, a recovery; and
    the circuit breaker's pauses (`pause_s`: its cooldown), its closing and its giving up."""

    type: Literal["rate_adjusted"] = "rate_adjusted"
    model: str
    note: str
    rpm: float | None = None
    tpm: float | None = None
    factor: float = 1.0
    pause_s: float = 0.0
    pauses: int | None = None  # the pauses it stands for (a 429 storm's are said together); None: 1 if pause_s


def pauses_of(p: dict[str, Any]) -> int:
    """How many pauses a `rate_adjusted` payload records (one written before `pauses`: 1 if it paused)."""
    n = p.get("pauses")
    return (1 if p.get("pause_s") else 0) if n is None else int(n)


class BatchPrepared(_Event):
    """Queries about to go out as one provider batch (recorded, with their dispatch, before any
    upload): a resume that finds this without a `batch_submitted` looks the batch up by `key`."""

    type: Literal["batch_prepared"] = "batch_prepared"
    key: str
    provider: str
    model: str
    role: str
    query_ids: list[str]
    at: float  # wall-clock time, to find the batch in the provider's list
    # A request that carries several queries (k samples of a prompt as one `n=k` line): its custom
    # id (the first query's id) -> its queries in the order of the answers' `index`; a resume needs
    # it to give each answer of the line to its query.
    lines: dict[str, list[str]] = {}


class BatchSubmitted(_Event):
    type: Literal["batch_submitted"] = "batch_submitted"
    key: str
    batch_id: str
    input_file_id: str | None = None


class BatchStatus(_Event):
    """The provider's state of a batch changed (validating, in_progress, finalizing, ended...)."""

    type: Literal["batch_status"] = "batch_status"
    key: str
    status: str
    counts: dict[str, int] = {}
    input_file_id: str | None = None  # set with status "uploaded" (OpenAI), before the batch is created


class BatchFinished(_Event):
    type: Literal["batch_finished"] = "batch_finished"
    key: str
    status: str  # completed | expired | cancelled | failed | lost (never created) | ...
    settled: int = 0
    failed: int = 0
    message: str = ""


class RunFinished(_Event):
    type: Literal["run_finished"] = "run_finished"
    status: Literal["completed", "budget_exhausted", "failed", "interrupted"]
    message: str = ""


class TrainingStarted(_Event):
    type: Literal["training_started"] = "training_started"
    model_config = ConfigDict(extra="allow")


class TrainingProgress(_Event):
    type: Literal["training_progress"] = "training_progress"
    model_config = ConfigDict(extra="allow")


class TrainingFinished(_Event):
    type: Literal["training_finished"] = "training_finished"
    model_config = ConfigDict(extra="allow")


class TrainingFailed(_Event):
    type: Literal["training_failed"] = "training_failed"
    model_config = ConfigDict(extra="allow")
    reason: str


class EvalStarted(_Event):
    type: Literal["eval_started"] = "eval_started"
    model_config = ConfigDict(extra="allow")


class EvalFinished(_Event):
    type: Literal["eval_finished"] = "eval_finished"
    model_config = ConfigDict(extra="allow")


EVENT_CLASSES: tuple[type[EventBase], ...] = (
    RunStarted, RunResumed, QueryReserved, QueryDispatched, AttemptFailed, QuerySettled, ProviderFault,
    QueryAbandoned, SampleProposed, SampleAccepted, SampleRejected, ItemDone, QuestionAdmitted,
    RunWarning, RunFinished, TrainingStarted, TrainingProgress, TrainingFinished, TrainingFailed,
    EvalStarted, EvalFinished, RateAdjusted, BatchPrepared, BatchSubmitted, BatchStatus, BatchFinished,
    QueryReused, ShareHandedOver, ExperimentGrid, CellStarted, CellGenerated, CellFinished, CellFailed, ExperimentResult,
)
Event = Annotated[Union[EVENT_CLASSES], Field(discriminator="type")]  # type: ignore[valid-type]

EVENT_TYPES = frozenset(cls.TYPE for cls in EVENT_CLASSES)


@functools.cache
def _adapter() -> TypeAdapter[Any]:
    return TypeAdapter(Event)


def parse_event(type_: str, payload: dict[str, Any]) -> Any:
    """A stored payload back to its typed event (raises pydantic.ValidationError on a bad one)."""
    return _adapter().validate_python({**payload, "type": type_})


def to_payload(event: BaseModel) -> tuple[str, dict[str, Any]]:
    data = event.model_dump(mode="json", exclude_none=False)
    return data.pop("type"), data


def plain_payload(cls: type[EventBase], **values: Any) -> tuple[str, dict[str, Any]]:
    """What `to_payload(cls(**values))` gives, without building and dumping the model.

    For the events the engine emits for every query (reserved, dispatched, settled, item done),
    from values it built itself and that are already plain JSON (a cost as its dict). Validating
    and dumping them was a twentieth of a zero-latency run's main thread. Events that carry a
    plugin's data (samples, verdicts) take this path only when that data is plain JSON already
    (`is_plain_json`). A test holds this to `to_payload` for every type the engine builds this way.
    (Key order differs from the model's; stored payloads and hashes are canonical, keys sorted.)"""
    defaults, mutable, required, allowed = _fields(cls)
    if not values.keys() <= allowed:
        raise TypeError(f"{cls.__name__} has no field {', '.join(k for k in values if k not in allowed)}")
    if not required <= values.keys():
        missing = [name for name in required if name not in values]
        raise TypeError(f"{cls.__name__}: {', '.join(missing)} is required")
    out = {**defaults, **values}
    for name in mutable:
        if name not in values:
            out[name] = out[name].copy()  # (a fresh list or dict: never the shared default)
    return cls.TYPE, out


@functools.cache
def _fields(cls: type[EventBase]) -> tuple[dict[str, Any], tuple[str, ...], frozenset[str], frozenset[str]]:
    """(defaults of the optional fields, those of them that are lists or dicts, required names, all names)."""
    fields = {name: f for name, f in cls.model_fields.items() if name != "type"}
    defaults = {name: f.default for name, f in fields.items() if not f.is_required()}
    mutable = tuple(name for name, d in defaults.items() if isinstance(d, (list, dict)))
    required = frozenset(name for name, f in fields.items() if f.is_required())
    return defaults, mutable, required, frozenset(fields)


def is_plain_json(value: Any) -> bool:
    """`value` is already what a model's JSON dump would make of it (str keys; no tuples, no
    infinities, no objects): a plugin's sample or verdict data that is, nearly always, may take
    `plain_payload`'s path; anything else goes through the model, which converts or refuses it."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        return all(type(k) is str and is_plain_json(v) for k, v in value.items())
    if kind is list:
        return all(is_plain_json(v) for v in value)
    return False


def plain_cost(queries: int, input_tokens: int, output_tokens: int, usd: float) -> dict[str, Any]:
    """A `Cost` as its dumped dict (usd always a float, as the model makes it)."""
    return {"queries": queries, "input_tokens": input_tokens, "output_tokens": output_tokens, "usd": float(usd)}
