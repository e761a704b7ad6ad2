"""Run orchestration: walk the strategy's plan, start items the budget can carry, record outcomes.

Whether an item may start is the admission's answer (run/admission.py: its worst case on top of
what running items may still ask for); the dispatcher enforces the exact per-query reservation
through the same check. Together they spend the budget to the last query without going over. How a
session opens (new or resumed) is run/session.py; one item's sample and verdict, run/item.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import anyio

from ...store.eventstore import EventStore
from .. import host
from ..api import PlanItem
from ..errors import BudgetExhausted, FatalRunError, PluginFailed, QueryFailed, RunStopping
from ..ledger.events import ItemDone, RunFinished, SampleRejected
from ..ledger.journal import WriterFailed
from ..plugin_faults import failure, guarded, guarded_iter
from .abort import abort_error
from .config import RunConfig
from .context import ItemContext
from .item import produce
from .progress import RunProgress
from .session import RunSession
from .store_choice import StoreChoice




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


class Runner(RunSession):
    """A run session driven to its end: the plan walked, items started as the budget admits them."""

    def __init__(self, cfg: RunConfig, store: EventStore | StoreChoice | str | None = None, *,
                 show_progress: bool = True, create: bool = True) -> None:
        super().__init__(cfg, store, show_progress=show_progress, create=create)
        self._in_flight_items = 0
        self._item_finished = anyio.Event()
        self._budget_hits: dict[str, int] = {}
        self._fatal: str | None = None
        self._stopping = False
        self._items_scope: anyio.CancelScope | None = None
        self._handoff: asyncio.Queue[PlanItem | None]  # items for idle workers: each walk of the plan makes its own
        self._idle_workers = 0
        self._free_streak = 0  # items in a row that took nothing from the budget (see _check_progress)
        self._free_limit = 1000

    def route(self, role: str) -> str:
        return self.admission.route(role)

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

    def _plugin_failed(self, reason: str) -> None:
        """A plugin's code failed (or broke its contract): the run ends as failed with `reason`, but
        gently: nothing new starts, and answers already on their way are settled, not thrown away."""
        if self._fatal is None:
            self._fatal = reason
        self.request_stop()

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
        self._free_limit = max(1000, 2 * max_items)  # above what a resume replays: the items in flight at a kill
        self._handoff, self._idle_workers = asyncio.Queue(), 0
        async with anyio.create_task_group() as items:
            self._items_scope = items.cancel_scope
            if self._stopping:
                items.cancel_scope.cancel()
            for item in self._plan(strategy):
                if self._halted():
                    break
                if item.key in self._done or item.strategy in exhausted:
                    if all_names is None and exhausted:
                        break
                    if all_names is not None and all_names <= exhausted:
                        break
                    continue
                try:
                    cost = guarded(f"strategy {item.strategy!r} item_cost() (or its verifier's)",
                                   self.admission.item_cost, item)
                except PluginFailed as exc:
                    self._plugin_failed(str(exc))
                    break
                tail = await self._room_for(item, cost, seen_hits.get(item.strategy, 0), max_items)
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
            for _ in range(self._idle_workers):  # every item ended: the workers may go
                self._handoff.put_nowait(None)
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

    def _plan(self, strategy: Any) -> Any:
        """The strategy's plan, walked once. Its failures, and a plan that breaks the contract (not a
        PlanItem; a key twice, which would run an item twice or loop on answers the run already
        holds), end the run as failed with one line instead of a traceback or a loop."""
        name = host.get_host().describe("strategies", self.cfg.strategy.name)
        seen: set[str] = set()
        try:
            for item in guarded_iter(f"{name} plan()", strategy.plan()):
                if not isinstance(item, PlanItem):
                    raise PluginFailed(f"{name} plan() yielded {type(item).__name__}, not a PlanItem")
                if item.key in seen:
                    raise PluginFailed(f"{name} plan() yielded the item key {item.key!r} twice; "
                                       "keys must be unique within a run")
                seen.add(item.key)
                yield item
        except PluginFailed as exc:
            self._plugin_failed(str(exc))

    async def _room_for(self, item: PlanItem, cost: dict[str, int], hits_seen: int, max_items: int) -> bool:
        """Wait until `item` may start; True if it starts as the tail (its worst case does not fit
        beside the running items, or its strategy ran into the budget): then it runs alone."""
        while True:
            tail = (not self.admission.fits(item, cost)
                    or self._budget_hits.get(item.strategy, 0) > hits_seen)
            if self._halted() or self._in_flight_items == 0:
                return tail
            if not tail and self._in_flight_items < max_items:
                return tail
            await self._wait_item()

    def _check_progress(self, item: PlanItem, ctx: ItemContext) -> None:
        """The budget is what ends a plan; an item that takes nothing from it (every answer one the
        run already held, or no question asked) brings that end no closer. Replayed items do that
        for a while after a resume (at most the items in flight at the kill); a plan that keeps
        doing it repeats its queries (a sample_index left out, say) and would never end."""
        if ctx.fresh:
            self._free_streak = 0
            return
        self._free_streak += 1
        if self._free_streak >= self._free_limit:
            self._plugin_failed(
                f"strategy {item.strategy!r}: its last {self._free_streak} items took nothing from the budget "
                "(each answer was one this run already had), so its plan would never end; give each sample its "
                "own query (a distinct sample_index or prompt)")

    def _start(self, tg: Any, item: PlanItem, cost: dict[str, int]) -> None:
        """Hand `item` to an idle worker, or start one. Items run on reused worker tasks: starting a
        task per item in the task group cost about a twenty-fifth of a zero-latency run's main thread."""
        self._in_flight_items += 1
        self.admission.pledge(item, cost)
        if self._idle_workers:
            self._idle_workers -= 1
            self._handoff.put_nowait(item)
        else:
            tg.start_soon(self._work, item)

    async def _work(self, item: PlanItem | None) -> None:
        while item is not None:
            await self._run_item(item)
            self._idle_workers += 1
            item = await self._handoff.get()

    async def _run_item(self, item: PlanItem) -> None:
        rec = self.recorder
        ctx = ItemContext(self, item)
        try:
            outcome = await produce(self, item, ctx)
            rec.emit_plain(ItemDone, item=item.key, strategy=item.strategy, outcome=outcome)
            self._check_progress(item, ctx)
        except BudgetExhausted:
            self._budget_hits[item.strategy] = self._budget_hits.get(item.strategy, 0) + 1
        except (RunStopping, WriterFailed):
            pass  # not done: a resume runs the item again, its settled answers come from the store
        except QueryFailed as exc:
            rec.emit(SampleRejected(item=item.key, strategy=item.strategy, stage="failed", reason=str(exc)))
            rec.emit(ItemDone(item=item.key, strategy=item.strategy, outcome="failed"))
        except FatalRunError as exc:
            self._fail(str(exc))
        except PluginFailed as exc:
            self._plugin_failed(str(exc))
        except Exception as exc:  # the strategy's or verifier's own code: one line, where it raised
            self._plugin_failed(failure(f"item {item.key!r} of strategy {item.strategy!r}", exc))
        finally:
            self.admission.finish(item)
            self._in_flight_items -= 1
            self._notify_item()


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """`exc` is a `kind`, or a group (task groups wrap) of nothing else."""
    inner = getattr(exc, "exceptions", None)
    if inner is None:
        return isinstance(exc, kind)
    return all(_only(e, kind) for e in inner)
