"""Run orchestration: walk the strategy's plan, start items the budget can carry, record outcomes.

The runner owns pacing at the level of whole plan items (an item is started only when the budget
can cover its worst case on top of what running items may still ask for), while the dispatcher
enforces the exact per-query reservation. Together they spend the budget to the last query
without going over.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import anyio

from ... import __version__
from ...store.eventstore import EventStore, NewEvent, owner_token
from .abort import abort_error
from .admission import Admission
from .assemble import Parts, build_endpoints, build_parts
from .config import RunConfig
from .context import ItemContext
from .dedupe import NearDuplicateIndex
from .dispatcher import Dispatcher
from ..ledger.events import (SCHEMA_VERSION, ItemDone, QuerySettled, RunFinished, RunResumed, RunStarted,
                             RunWarning, SampleAccepted, SampleProposed, SampleRejected, to_payload)
from ..ledger.ledger import Ledger
from .progress import RunProgress
from ..ledger import crashpoints
from ..ledger.journal import HEARTBEAT_S, Journal, WriterFailed
from ..ledger.replay import replay
from ..redact import scrub_payload, scrub_value
from ..api import PlanItem
from ..errors import BudgetExhausted, FatalRunError, QueryFailed, ResumeRefused, RunNameTaken, RunStopping
from .quality_gate import GATE_EVENTS, QualityGate, answer_reply
from .store_choice import StoreChoice, choose_store, open_store




@dataclass
class RunResult:
    run_id: str
    status: str
    message: str
    snapshot: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # one line: status, binding limit, samples accepted/rejected, rate
    store_url: str = ""  # where the run is recorded (open_store(result.store_url) reads it back)
    # Why the run could not record its end (store unwritable, lease taken over); `generate` raises it.
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "budget_exhausted")


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


class Runner:
    def __init__(self, cfg: RunConfig, store: EventStore | StoreChoice | str | None = None, *,
                 show_progress: bool = True, create: bool = True) -> None:
        self.cfg = cfg
        self.show_progress = show_progress
        # Everything that can fail on bad input happens before the store is even opened.
        self.parts: Parts = build_parts(cfg)
        self.endpoints = build_endpoints(cfg, self.parts.roles)
        self.warnings: list[str] = list(self.parts.verifier.start_warnings(self.parts.seeds))
        if isinstance(store, EventStore):
            self.store_choice = StoreChoice(store.url, "the caller")
            self.store = store
        else:
            self.store_choice = (store if isinstance(store, StoreChoice)
                                 else choose_store(store, cfg.run.store, "the run config"))
            self.store = open_store(self.store_choice, create=create)
        self._ran = False
        self._samples_before = (0, 0)  # (accepted, rejected) by earlier sessions of a resumed run
        self.owner = owner_token()
        self.dedupe: NearDuplicateIndex | None = None
        self.recorder: Journal
        self.dispatcher: Dispatcher
        self.ledger: Ledger
        self.admission: Admission
        self._in_flight_items = 0
        self._item_finished = anyio.Event()
        self._budget_hits: dict[str, int] = {}
        self._fatal: str | None = None
        self._stopping = False
        self._items_scope: anyio.CancelScope | None = None

    def route(self, role: str) -> str:
        return self.admission.route(role)

    # ---- entry points -----------------------------------------------------------------
    def _admission(self) -> Admission:
        return Admission(self.ledger, self.endpoints, self.parts.strategy, self.parts.verifier)

    def _recorder(self, run_id: str, last_seq: int, head: str) -> Journal:
        """The run's event writer, with the budget ledger subscribed: heartbeats well inside the
        lease, and stops the run at once if a commit is refused (store unwritable, lease taken over)."""
        journal = Journal(self.store, run_id, last_seq, head, self.owner,
                          heartbeat_s=min(HEARTBEAT_S, self.cfg.run.lease_ttl_s / 3),
                          on_failure=lambda _exc: self.hard_stop())
        journal.subscribe(self.ledger.apply)
        return journal

    def start_new(self) -> str:
        cfg = self.cfg
        self._check_name_free(cfg.run.name)
        type_, payload = to_payload(RunStarted(config=cfg.snapshot(), config_hash=cfg.config_hash(),
                                               plan_hash=cfg.plan_hash(), version=__version__,
                                               budget=self.parts.budget.as_dict(), config_dir=cfg.base_dir,
                                               warnings=self.warnings, prices=self.prices(),
                                               seeds=[{"id": s.id, "question": s.question, "answer": s.answer}
                                                      for s in self.parts.seeds]))
        # The run row and its run_started commit together: a kill at any instant leaves either no
        # run or one that `--resume` can read. Both are scrubbed like every event (see redact).
        run_id, last, head = self.store.start_run(cfg.run.name, scrub_value(cfg.snapshot()), cfg.config_hash(),
                                                  [NewEvent(type_, scrub_payload(payload), SCHEMA_VERSION)],
                                                  owner=self.owner)
        crashpoints.committed()
        self.ledger = Ledger(self.parts.budget)
        self.ledger.apply(last, type_, payload)
        self.recorder = self._recorder(run_id, last, head)
        self.admission = self._admission()
        self.dispatcher = Dispatcher(self.recorder, self.ledger, self.endpoints, self.admission,
                                     lookup_settled=self._lookup_settled, **self._reuse_options())
        self._init_dedupe([])
        self._init_gate()
        self._done: set[str] = set()
        return run_id

    def start_resume(self, run_id: str) -> str:
        info_before = self.store.get_run(run_id)
        events = self.store.iter_events(run_id)
        state = replay(events)
        if state.plan_hash != self.cfg.plan_hash():
            diffs = _diff(self._plan_view_of(state.config or {}), self.cfg.plan_view())
            raise ResumeRefused(
                f"run {run_id} was started with a different plan; refusing to mix them. Changed:\n  "
                + "\n  ".join(diffs or ["(plan hash differs)"]))
        self.store.acquire(run_id, self.owner, ttl_s=self.cfg.run.lease_ttl_s)
        info = self.store.get_run(run_id)
        self.ledger = state.ledger
        self.ledger.spec = self.parts.budget  # budgets and limits may change between sessions
        self.recorder = self._recorder(run_id, info.last_seq, info.head_hash)
        unsettled = list(self.ledger.queries)
        self.recorder.emit(RunResumed(pid=os.getpid(), host=socket.gethostname(), owner=self.owner,
                                      previous_owner=info_before.owner,
                                      unsettled=unsettled, config_hash=self.cfg.config_hash(),
                                      budget=self.parts.budget.as_dict(), config=self.cfg.snapshot(),
                                      config_dir=self.cfg.base_dir, prices=self.prices()))
        self.admission = self._admission()
        self.dispatcher = Dispatcher(self.recorder, self.ledger, self.endpoints, self.admission, answered=state.answered,
                                     finish_reasons=state.finish_reasons, lookup_settled=self._lookup_settled,
                                     **self._reuse_options())
        for ep in self._unique_endpoints():  # batches the last session left open are polled, not resent
            if ep.batch is not None:
                ep.batch.adopt(self.dispatcher, ep)
        self._init_dedupe([q for _, q in state.admitted])
        self._init_gate(self.store.iter_events(run_id, types=list(GATE_EVENTS)))
        self._done = state.done_items
        self._samples_before = (state.accepted, sum(state.rejected.values()))
        return run_id

    def prices(self) -> dict[str, dict[str, Any]]:
        """The price each model is counted at, as recorded in the run's events."""
        return {ep.model: ep.price.as_dict() for ep in self.endpoints.values() if ep.price is not None}

    def _check_name_free(self, name: str) -> None:
        """One name, one run: a second run under a finished run's name would pay for every query
        again and leave `show NAME` / `export NAME` ambiguous. (A row with no events, which an older
        release left when killed before its first commit, holds no name: it never started.)"""
        taken = [r for r in self.store.list_runs(name=name) if r.last_seq > 0]
        if not taken:
            return
        r = taken[-1]
        unfinished = r.kind == "generate" and r.status not in ("completed", "budget_exhausted")
        cont = "pass --resume to continue it" if unfinished else f"pass --run {r.id} to continue it"
        raise RunNameTaken(f"run name {name!r} is taken by run {r.id} ({r.kind}, {r.status}); {cont}, "
                           "or --name NEW to start another run")

    def abandon_unstarted(self, why: str) -> None:
        """A run started but never driven (its event loop could not start, an interrupt came first)
        is closed as failed, so no run is left looking `running` forever."""
        if self._ran or not hasattr(self, "recorder"):
            return
        try:
            self.recorder.emit(RunFinished(status="failed", message=why))
            self.recorder.commit_now()
        finally:
            self.store.release(self.recorder.run_id, self.owner, "failed")

    def _plan_view_of(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        try:
            return RunConfig.model_validate(snapshot).plan_view()
        except Exception:
            return snapshot

    def _init_dedupe(self, admitted: list[str]) -> None:
        d = self.cfg.dedupe
        if not d.enabled:
            return
        self.dedupe = NearDuplicateIndex(threshold=d.threshold, ngram=d.ngram, seed=self.cfg.run.seed)
        for s in self.parts.seeds:
            self.dedupe.add(s.question, f"seed {s.id}")
        for i, q in enumerate(admitted):
            self.dedupe.add(q, f"question {i}")

    def _lookup_settled(self, qid: str) -> str | None:
        """The answer of a query this run settled (or reused), read back through the store's index."""
        found = (self.store.find_key(qid, self.recorder.run_id)
                 or self.store.find_key(f"reused:{qid}", self.recorder.run_id))
        ev = self.store.get_event(*found) if found is not None else None
        if ev is None:
            return None
        self.dispatcher.finish_reasons[qid] = ev.payload.get("finish_reason")
        return ev.payload.get("text")

    def _reuse_options(self) -> dict[str, Any]:
        return {"replicate": self.cfg.run.replicate,
                "find_reusable": self._find_reusable if self.cfg.run.reuse else None}

    def _find_reusable(self, qid: str) -> tuple[str, int, dict[str, Any]] | None:
        """An identical query settled by another run of this store: (run, seq, its settled payload)."""
        found = self.store.find_key(qid)
        if found is None or found[0] == self.recorder.run_id:
            return None
        ev = self.store.get_event(*found)
        if ev is None or ev.type != QuerySettled.TYPE:
            return None
        return found[0], found[1], ev.payload

    # ---- stopping ----------------------------------------------------------------------
    def request_stop(self) -> None:
        """Start nothing new; items in flight end at their next query (or when cut by `hard_stop`)."""
        self._stopping = True
        if hasattr(self, "dispatcher"):
            self.dispatcher.stopping = True
        for queue in self._batch_queues():
            queue.stop()
        self._notify_item()

    def hard_stop(self) -> None:
        """Cancel whatever is still in flight; its attempts are recorded as possibly billed."""
        self.request_stop()
        if self._items_scope is not None:
            self._items_scope.cancel()

    def _fail(self, reason: str) -> None:
        """A fatal error stops the run at once: nothing queued behind a dead teacher should wait."""
        if self._fatal is None:
            self._fatal = reason
        if self._items_scope is not None:
            self._items_scope.cancel()

    def _unique_endpoints(self) -> list[Any]:
        return list({id(e): e for e in self.endpoints.values()}.values())

    def _batch_queues(self) -> list[Any]:
        return [ep.batch for ep in self._unique_endpoints() if ep.batch is not None]

    # ---- the loop ----------------------------------------------------------------------
    async def run(self) -> RunResult:
        self._ran = True
        run_id = self.recorder.run_id
        status, message = "interrupted", "stopped before the plan finished"
        progress = RunProgress(self.ledger, self.cfg.run.name, enabled=self.show_progress,
                               accepted=self._samples_before[0], rejected=self._samples_before[1])
        self.recorder.subscribe(progress.on_event)
        try:
            with progress:
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self.recorder.run)
                    outer.start_soon(self._tick, progress)
                    for ep in self._unique_endpoints():
                        if ep.batch is not None:  # collects queries into batches, follows them
                            outer.start_soon(self._run_batches, ep)
                    try:
                        status, message = await self._feed()
                    finally:
                        with anyio.CancelScope(shield=True):
                            for queue in self._batch_queues():
                                queue.release_queued()
                            if not self._fatal:
                                self.gate.finish()
                            if self._fatal:
                                status, message = "failed", self._fatal
                            self.recorder.emit(RunFinished(status=status, message=message))
                            await self.recorder.close()
                        outer.cancel_scope.cancel()
        finally:
            try:
                self.store.release(run_id, self.owner, status)
            except Exception:
                pass
            for ep in self._unique_endpoints():
                with anyio.CancelScope(shield=True):
                    try:
                        await ep.teacher.aclose()
                    except Exception:
                        pass
        result = RunResult(run_id, status, message, self.ledger.snapshot(), progress.summary(status), self.store.url)
        if self.recorder.failed is not None:  # raised by `generate`, outside every task group
            result.error = abort_error(self.store, run_id, self.owner, self.recorder.failed,
                                       self.recorder.durable_seq, self.cfg.run.lease_ttl_s)
            result.status, result.message = "aborted", str(result.error)
        return result

    async def _run_batches(self, ep: Any) -> None:
        """An endpoint's batch queue; once the event writer has failed, its refusal to record more is
        how the queue stops, not an error of its own (the run ends with the writer's reason)."""
        try:
            await ep.batch.run(self.dispatcher, ep)
        except Exception as exc:
            if not _only(exc, WriterFailed):
                raise

    async def _tick(self, progress: RunProgress) -> None:
        while True:
            progress.update()
            await anyio.sleep(0.25)

    async def _wait_item(self) -> None:
        ev = self._item_finished
        await ev.wait()

    def _notify_item(self) -> None:
        done, self._item_finished = self._item_finished, anyio.Event()
        done.set()

    def _halted(self) -> bool:
        return self._fatal is not None or self._stopping

    async def _drain(self) -> None:
        while self._in_flight_items > 0:
            await self._wait_item()

    async def _feed(self) -> tuple[str, str]:
        """Start plan items while the budget can carry them.

        An item whose worst case no longer fits (or that follows one that ran into the budget) runs
        alone: if even alone it cannot get its queries reserved, its strategy's budget is spent.
        That is also what ends a run whose limit the pledges cannot foresee (input tokens, USD)."""
        strategy = self.parts.strategy
        exhausted: set[str] = set()
        seen_hits: dict[str, int] = {}
        all_names = set(getattr(strategy, "budget_fractions", lambda: {})()) or None
        max_items = max(8, 2 * max(ep.concurrency.maximum for ep in self.endpoints.values()),
                        *(q.size for q in self._batch_queues()))
        finished = False
        async with anyio.create_task_group() as items:
            self._items_scope = items.cancel_scope
            if self._stopping:
                items.cancel_scope.cancel()
            for item in strategy.plan():
                if self._halted():
                    break
                if item.key in self._done or item.strategy in exhausted:
                    if all_names is None and exhausted:
                        break
                    if all_names is not None and all_names <= exhausted:
                        break
                    continue
                cost = self.admission.item_cost(item)
                while True:
                    tail = (not self.admission.fits(item, cost)
                            or self._budget_hits.get(item.strategy, 0) > seen_hits.get(item.strategy, 0))
                    if self._halted() or self._in_flight_items == 0:
                        break
                    if not tail and self._in_flight_items < max_items:
                        break
                    await self._wait_item()
                if self._halted():
                    break
                hits_before = seen_hits[item.strategy] = self._budget_hits.get(item.strategy, 0)
                self._start(items, item, cost)
                if tail:
                    await self._drain()
                    if self._budget_hits.get(item.strategy, 0) > hits_before:
                        exhausted.add(item.strategy)
                        if all_names is None or all_names <= exhausted:
                            break
            else:
                finished = True
            await self._drain()
        self._items_scope = None
        if self._fatal:
            return "failed", self._fatal
        if finished and not self._stopping:
            return "completed", "the plan is complete"
        if self._stopping and not exhausted:
            return "interrupted", "stopped by a signal; `generate --resume` continues the run"
        spent = self.ledger.total_spent()
        return "budget_exhausted", (f"budget exhausted: spent {spent.queries} queries, {spent.input_tokens} in / "
                                    f"{spent.output_tokens} out tokens, ${spent.usd:.4f}")

    def _start(self, tg: Any, item: PlanItem, cost: dict[str, int]) -> None:
        self._in_flight_items += 1
        self.admission.pledge(item, cost)
        tg.start_soon(self._run_item, item)

    async def _run_item(self, item: PlanItem) -> None:
        ctx = ItemContext(self, item)
        rec = self.recorder
        try:
            sample = await self.parts.strategy.run(item, ctx)
            if sample is None:
                outcome = "rejected"
                if not ctx.rejected:
                    rec.emit(SampleRejected(item=item.key, strategy=item.strategy, stage="parse",
                                            reason="strategy produced no sample"))
            else:
                outcome = await self._decide(item, sample, ctx)
            rec.emit(ItemDone(item=item.key, strategy=item.strategy, outcome=outcome))
        except BudgetExhausted:
            self._budget_hits[item.strategy] = self._budget_hits.get(item.strategy, 0) + 1
        except (RunStopping, WriterFailed):
            pass  # not done: a resume runs the item again, its settled answers come from the store
        except QueryFailed as exc:
            rec.emit(SampleRejected(item=item.key, strategy=item.strategy, stage="failed", reason=str(exc)))
            rec.emit(ItemDone(item=item.key, strategy=item.strategy, outcome="failed"))
        except FatalRunError as exc:
            self._fail(str(exc))
        finally:
            self.admission.finish(item)
            self._in_flight_items -= 1
            self._notify_item()

    async def _decide(self, item: PlanItem, sample: Any, ctx: ItemContext) -> str:
        """Record the sample, then the engine's own checks (whole answer, not a copy), then the
        verifier's: the first that says no rejects it."""
        rec = self.recorder
        sid = f"s-{item.key}"
        replies = list(ctx.replies)
        answer = answer_reply(replies)
        models = {ctx.roles[q]: self.endpoints[self.route(ctx.roles[q])].model for q in ctx.query_ids}
        rec.emit(SampleProposed(sample_id=sid, item=item.key, strategy=sample.strategy or item.strategy,
                                seed_id=sample.seed_id, question=sample.question, answer=sample.answer,
                                reference=sample.reference, query_ids=list(ctx.query_ids),
                                roles=dict(ctx.roles), models=models, meta=sample.meta,
                                finish_reason=answer.finish_reason if answer else None,
                                finish_reasons={r.query_id: r.finish_reason for r in replies}))
        problem = self.gate.check(item.key, sample, replies)
        if problem is not None:
            rec.emit(SampleRejected(sample_id=sid, item=item.key, strategy=item.strategy, stage="quality",
                                    kind=problem.kind, reason=problem.reason, details=problem.details,
                                    question=sample.question))
            return "rejected"
        n_before = len(ctx.query_ids)
        verdict = await self.parts.verifier.verify(sample, ctx)
        if verdict.accepted:
            rec.emit(SampleAccepted(sample_id=sid, reason=verdict.reason, details=verdict.details,
                                    query_ids=ctx.query_ids[n_before:]))
            return "accepted"
        rec.emit(SampleRejected(sample_id=sid, item=item.key, strategy=item.strategy, stage="verification",
                                reason=verdict.reason, details=verdict.details, question=sample.question))
        return "rejected"

    def _warn(self, kind: str, message: str) -> None:
        self.recorder.emit(RunWarning(kind=kind, message=message))

    def _init_gate(self, earlier: Any = ()) -> None:
        q = self.cfg.quality
        self.gate = QualityGate(self.parts.task, keep_truncated=q.keep_truncated,
                                keep_duplicates=q.keep_duplicate_answers, warn=self._warn)
        self.gate.load(earlier)


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """`exc` is a `kind`, or a group (task groups wrap) of nothing else."""
    inner = getattr(exc, "exceptions", None)
    if inner is None:
        return isinstance(exc, kind)
    return all(_only(e, kind) for e in inner)
