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
from ...store.records import FINISHED
from .. import host
from ..api import PlanItem
from ..errors import BudgetExhausted, FatalRunError, PluginFailed, QueryFailed, RunStopping
from ..ledger.budget import DIMENSIONS, Amount, strategy_scope
from ..ledger.events import ItemDone, RunFinished, RunWarning, SampleRejected
from ..ledger.journal import WriterFailed
from ..plugin_faults import failure, guarded
from .abort import abort_error
from .config import RunConfig
from . import handover
from .context import ItemContext
from .item import produce
from .plan_guard import NO_ITEMS, FreeItemWatch, UnboundedSpendWatch, nothing_planned, walk_plan
from .progress import RunProgress, binding_scope, limit_words
from .session import RunSession
from .store_choice import StoreChoice, resume_phrase

# Items started in a row, with room for all of them, before the walk lets them go first (see
# `_let_started_go`).
START_BURST = 8
FATAL_GRACE_S = 5.0  # what requests already out get to come back once a fatal error stops the run


@dataclass
class RunResult:
    run_id: str
    status: str
    message: str
    snapshot: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # one line: status, binding limit, samples accepted/rejected, rate
    # Where the run is recorded (open_store(result.store_url) reads it back). Not in the repr (below),
    # which a notebook shows: a PostgreSQL URL may hold the password (QA); `store` is the masked form.
    store_url: str = ""
    # Why the run could not record its end (store unwritable, lease taken over); `generate` raises it.
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.status in FINISHED

    @property
    def store(self) -> str:
        """The store's URL as it may be shown: any password masked."""
        from ...store.urls import display

        return display(self.store_url)

    def __repr__(self) -> str:
        return (f"RunResult(run_id={self.run_id!r}, status={self.status!r}, message={self.message!r}, "
                f"store={self.store!r}, summary={self.summary!r})")


class Runner(RunSession):
    """A run session driven to its end: the plan walked, items started as the budget admits them."""

    def __init__(self, cfg: RunConfig, store: EventStore | StoreChoice | str | None = None, *,
                 show_progress: bool = True, create: bool = True) -> None:
        super().__init__(cfg, store, show_progress=show_progress, create=create)
        self._in_flight_items = 0
        self._item_finished = asyncio.Event()  # (renewed per item: asyncio's is the cheaper)
        self._item_waits = 0  # times the walk waited for an item to end (starts between are a burst)
        self._budget_hits: dict[str, int] = {}
        self._fatal: str | None = None
        self._stopping = False
        self._items_scope: anyio.CancelScope | None = None
        self._outer_tg: Any = None  # the run's own task group, for the cut after a fatal error's grace
        self._cutting = False
        self._handoff: asyncio.Queue[PlanItem | None]  # items for idle workers: each walk of the plan makes its own
        self._idle_workers = 0
        self._free_items = FreeItemWatch()  # a plan that only repeats answered queries would never end
        self._unbounded = UnboundedSpendWatch()  # nor one whose items pay only roles no limit counts
        self._exhausted: set[str] = set()  # strategies whose budget (share) is spent
        self._all_names: set[str] | None = None  # a mix's strategies, each with its own share
        self._bounced: list[PlanItem] = []  # items the budget refused while others were in flight
        self._parked: list[PlanItem] = []  # refused items of a spent part: run if it regains room
        self._running: dict[str, int] = {}  # items in flight per strategy
        self._fractions: dict[str, float] = {}  # a mix's parts; with its hooks, see handover.mix_hooks
        self._ended_parts: Any = None
        self._regain: Any = None
        self._refused_by: str | None = None  # the limit the budget last refused a query by
        self._planned = 0  # items the plan yielded, done ones too: none at all is a run with nothing to do

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

    def stop_sending(self) -> None:
        """Send nothing more; safe in a signal handler (it only sets a flag). The loop then stops the
        run as `request_stop` says, when it takes the signal."""
        if hasattr(self, "dispatcher"):
            self.dispatcher.stopping = True

    def hard_stop(self) -> None:
        """Cancel whatever is still in flight; its attempts are recorded as possibly billed."""
        self.request_stop()
        if self._items_scope is not None:
            self._items_scope.cancel()

    def _fail(self, reason: str) -> None:
        """A fatal error stops the run: nothing more is sent, and requests already out get
        FATAL_GRACE_S to come back before they are cut. The server that refused one (a wrong model,
        a max_tokens it does not take) refuses the others as fast, and each then settles as not
        billed; cut at once, each counted as maybe billed, at its worst case."""
        if self._fatal is None:
            self._fatal = reason
        self.request_stop()
        if self._outer_tg is not None and not self._cutting:
            self._cutting = True
            self._outer_tg.start_soon(self._cut_after, FATAL_GRACE_S)
        elif self._outer_tg is None and self._items_scope is not None:
            self._items_scope.cancel()

    async def _cut_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
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
        self.recorder.subscribe(progress.on_event, RunProgress.EVENTS)
        try:
            with progress:
                async with anyio.create_task_group() as outer:
                    self._outer_tg = outer
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
                            for ep in self._unique_endpoints():
                                self.dispatcher.say_unsaid_pauses(ep)
                            if self._fatal:
                                status, message = "failed", self._fatal
                            self.recorder.emit(RunFinished(status=status, message=message))
                            await self.recorder.close()
                        outer.cancel_scope.cancel()
        finally:
            self.close_writer()
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
        note = NO_ITEMS if status == "completed" and not self._planned else ""
        result = RunResult(run_id, status, message, self.ledger.snapshot(), progress.summary(status, note),
                           self.store.url)
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
            fatal = _first(exc, FatalRunError)  # a batch that cannot be followed (see batching._follow)
            if fatal is not None:
                self._fail(str(fatal))
            elif not _only(exc, WriterFailed):
                raise

    async def _tick(self, progress: RunProgress) -> None:
        while True:
            progress.update()
            await anyio.sleep(0.25)

    async def _wait_item(self) -> None:
        self._item_waits += 1
        ev = self._item_finished
        await ev.wait()

    def _paced_online(self) -> bool:
        """A rate paces online sends (a batch is filled whole, and no limiter paces it)."""
        return not self._batch_room and any(ep.limiter.paced for ep in self.endpoints.values())

    async def _let_started_go(self) -> None:
        """Let the items just started take their first steps and their first requests go out
        before more items start, while a rate paces the sends (the walk cannot usefully run ahead
        of it then). Started in one go, every item's first steps (prompt, reservation, events) ran
        before anything else did, the journal's commit and so every send included, and a commit
        competing with them for the interpreter was as slow: with the ~1,200 items Little's law
        gives 6000 RPM, a run's first request went out 1.5 s after its start instead of 0.8 s.
        Unpaced, the walk keeps the endpoint's concurrency full instead: waiting on commits there
        cost a zero-latency run a fifth of its rate. (A writer that fails stops the run; the walk
        sees that at its next item.)"""
        await asyncio.sleep(0)
        try:
            await self.recorder.flush()
        except WriterFailed:
            pass

    def _notify_item(self) -> None:
        done, self._item_finished = self._item_finished, asyncio.Event()
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
        That is also what ends a run whose limit the pledges cannot foresee (input tokens, USD).
        An item that ran into the budget beside others is run again alone once they are done.
        A mix part that handed its share to parts found spent after the plan ended gives them room
        again: the plan is walked once more (items done are skipped)."""
        strategy = self.parts.strategy
        self._exhausted, self._bounced, self._parked = set(), [], []
        self._all_names = set(getattr(strategy, "budget_fractions", lambda: {})()) or None
        self._fractions, self._ended_parts, self._regain = handover.mix_hooks(strategy)
        self._batch_room = max((q.size for q in self._batch_queues()), default=0)
        most = max(2 * max(ep.concurrency.maximum for ep in self.endpoints.values()), self._batch_room)
        self._free_items.limit = max(1000, 2 * most)  # above what a resume replays: the items in flight
        self._handoff, self._idle_workers = asyncio.Queue(), 0
        finished = False
        async with anyio.create_task_group() as items:
            self._items_scope = items.cancel_scope
            if self._stopping:
                items.cancel_scope.cancel()
            while True:
                finished = await self._walk(items)
                await self._drain()
                if not self._hand_over() or self._halted():
                    break
            for _ in range(self._idle_workers):  # every item ended: the workers may go
                self._handoff.put_nowait(None)
        self._items_scope = None
        return self._ending(finished)

    async def _walk(self, items: Any) -> bool:
        """One walk of the plan, starting what the budget admits; True if the plan ended."""
        strategy = self.parts.strategy
        seen_hits: dict[str, int] = {}
        finished, burst, waits = False, 0, self._item_waits
        for item in walk_plan(strategy, host.get_host().describe("strategies", self.cfg.strategy.name),
                              self._plugin_failed):
            self._planned += 1
            self._hand_over()
            if self._halted() or (self._bounced and await self._rerun_bounced(items)):
                break
            if item.key in self._done or item.strategy in self._exhausted:
                if self._spent_out():
                    break
                continue
            try:
                cost = guarded(f"strategy {item.strategy!r} item_cost() (or its verifier's)",
                               self.admission.item_cost, item)
            except PluginFailed as exc:
                self._plugin_failed(str(exc))
                break
            tail = await self._room_for(item, cost, seen_hits.get(item.strategy, 0))
            if self._halted():
                break
            hits_before = seen_hits[item.strategy] = self._budget_hits.get(item.strategy, 0)
            self._start(items, item, cost)
            if tail and await self._ran_into_budget(item, hits_before):
                break
            if self._item_waits != waits:  # it waited for room: one start, not a burst
                waits, burst = self._item_waits, 0
            burst += 1
            if burst % START_BURST == 0 and self._paced_online():
                await self._let_started_go()
        else:
            finished = True
            await self._rerun_bounced(items)
        return finished

    def _hand_over(self) -> bool:
        """Record the hand-over of every mix part whose plan ended and whose items are all finished
        (run/handover.py); the ledger applies it at once. True if a part found spent got room again:
        it is no longer spent, and its refused items wait to run again."""
        if not self._fractions or self._halted():
            return False
        handed = self.ledger.handed_over()
        ended = self._ended_parts()
        if ended <= handed:
            return False
        busy = {name for name, n in self._running.items() if n} | self._exhausted
        busy |= {item.strategy for item in (*self._bounced, *self._parked)}
        recipients: set[str] = set()
        for name, to in handover.due(self._fractions, ended, handed, busy):
            spent = self.ledger.spent.get(strategy_scope(name)) or Amount()
            self.recorder.emit(handover.event(name, spent, to))
            recipients |= set(to)
        regained = recipients & self._exhausted
        for name in regained:
            self._exhausted.discard(name)
            self._regain(name)
        self._bounced += [item for item in self._parked if item.strategy in regained]
        self._parked = [item for item in self._parked if item.strategy not in regained]
        return bool(regained)

    def _spent_out(self) -> bool:
        """No strategy of the plan may start another item (in a mix each has its own share)."""
        return bool(self._exhausted) and (self._all_names is None or self._all_names <= self._exhausted)

    async def _ran_into_budget(self, item: PlanItem, hits_before: int) -> bool:
        """`item` runs alone: once it ends, if it still ran into the budget its strategy is spent.
        True when no strategy may go on."""
        await self._drain()
        if self._budget_hits.get(item.strategy, 0) > hits_before:
            self._exhausted.add(item.strategy)
            # A mix stops planning a part whose share is spent: its other parts may be finite and
            # done, and an endless part's items, each skipped here without a pause, never ended the walk.
            spent = getattr(self.parts.strategy, "share_spent", None)
            if spent is not None:
                spent(item.strategy)
        return self._spent_out()

    async def _rerun_bounced(self, tg: Any) -> bool:
        """Items refused by the budget while others were in flight, run again one by one, alone:
        the others' reservations (worst cases) were held then, and settle lower. Without this they
        were dropped, and a run whose plan then ended said `completed` with them never done (a dollar
        budget and `n` requests: 4 of 80 items done). True when no strategy may go on."""
        while True:
            await self._drain()  # (the items in flight may bounce too)
            if not self._bounced or self._halted():
                break
            if self._batch_room and len(self._bounced) > 1 and await self._rerun_wave(tg):
                continue
            item = self._bounced.pop(0)
            if item.strategy in self._exhausted:
                self._parked.append(item)
                continue
            hits = self._budget_hits.get(item.strategy, 0)
            self._start(tg, item, self.admission.item_cost(item))
            if await self._ran_into_budget(item, hits):
                return True
        return self._spent_out()

    async def _rerun_wave(self, tg: Any) -> bool:
        """Batch mode: the bounced items again together, as many as may run at once; True if any
        of them got its queries in. One by one, each waited `batch_wait_s` for a batch of one query:
        QA's dollar budget went 7, 1, 1, 1... queries a batch, 21 batches in two minutes. Those the
        budget refuses again bounce again; when none gets in, the caller goes on one by one, which
        alone tells a spent budget from one held by reservations that settle lower."""
        wave = [item for item in self._bounced if item.strategy not in self._exhausted][: self._item_room()]
        if len(wave) < 2:
            return False
        taken = {item.key for item in wave}
        self._bounced = [item for item in self._bounced if item.key not in taken]
        for item in wave:
            self._start(tg, item, self.admission.item_cost(item))
        await self._drain()
        return sum(item.key in taken for item in self._bounced) < len(wave)

    def _ending(self, finished: bool) -> tuple[str, str]:
        if self._fatal:
            return "failed", self._fatal
        if finished and not self._stopping and not self._exhausted and not self._bounced:
            return "completed", "the plan is complete" if self._planned else self._nothing_planned()
        if self._stopping and not self._spent_out():  # (a mix part spent its share: the others had not)
            return "interrupted", f"stopped by a signal; {resume_phrase(self.store_choice)}"
        spent = self.ledger.total_spent()
        if self._admits_nothing(spent):
            # Not a spent budget but a budget no query fits in: "budget exhausted, spent 0", exit 0,
            # and an empty dataset would tell the user nothing about the fix.
            return "failed", (f"the budget cannot cover a single query: one query's worst case (its prompt and "
                              f"max_tokens of answer, at its price) is over the {self._refused_by}; raise that "
                              "limit or lower max_tokens")
        role, dim, done, limit = binding_scope(self.ledger)  # (QA: a role's limit that ended it went unnamed)
        bound = f" ({limit_words(role, dim, done, limit)})" if limit is not None else ""
        return "budget_exhausted", (f"budget exhausted{bound}: spent {spent.queries} queries, {spent.input_tokens} in / "
                                    f"{spent.output_tokens} out tokens, ${spent.usd:.4f}")

    def _nothing_planned(self) -> str:
        """A plan without items: a run warning says why (live, in `show`), the message that it was so."""
        seeds = self.cfg.seeds
        path = seeds.extras().get("path")
        source = f"{path} ({seeds.source})" if isinstance(path, str) else seeds.source
        name = host.get_host().describe("strategies", self.cfg.strategy.name)
        self.recorder.emit(RunWarning(kind="empty_plan", message=nothing_planned(name, len(self.parts.seeds), source)))
        return f"{NO_ITEMS}; nothing was asked"

    def _admits_nothing(self, spent: Any) -> bool:
        """The budget refused the run's very first query: nothing was ever sent or reused in any
        session, and no limit is zero on purpose (an experiment's seeds-only cell asks nothing)."""
        if self._refused_by is None or spent.queries or self.ledger.counts["dispatched"]:
            return False
        spec = self.ledger.spec
        limits = [spec.total, *spec.roles.values(), *spec.strategies.values()]
        return not any(getattr(lim, d) is not None and getattr(lim, d) <= 0 for lim in limits for d in DIMENSIONS)

    async def _room_for(self, item: PlanItem, cost: dict[str, int], hits_seen: int) -> bool:
        """Wait until `item` may start; True if it starts as the tail (its worst case does not fit
        beside the running items, or its strategy ran into the budget): then it runs alone."""
        while True:
            tail = (not self.admission.fits(item, cost)
                    or self._budget_hits.get(item.strategy, 0) > hits_seen)
            if self._halted() or self._in_flight_items == 0:
                return tail
            if not tail and self._in_flight_items < self._item_room():
                return tail
            await self._wait_item()

    def _item_room(self) -> int:
        """How many items may run at once: a quarter more than the endpoints let out now (their
        concurrency grows to what a rate needs), or a whole batch in batch mode. The quarter keeps
        items ready for a slot that frees; twice as many, as before, only queued for slots, each
        waiting item one more task wake-up: a zero-latency run went 12% faster with the quarter
        (interleaved 10k runs; as many items as slots did no better)."""
        slots = max(ep.concurrency.limit for ep in self.endpoints.values())
        return max(8, slots + -(-slots // 4), self._batch_room)

    def _start(self, tg: Any, item: PlanItem, cost: dict[str, int]) -> None:
        """Hand `item` to an idle worker, or start one. Items run on reused worker tasks: starting a
        task per item in the task group cost about a twenty-fifth of a zero-latency run's main thread."""
        self._in_flight_items += 1
        self._running[item.strategy] = self._running.get(item.strategy, 0) + 1
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

    def _mark_done(self, item: PlanItem) -> None:
        """A mix's plan may be walked again after a hand-over: it must skip what this session did.
        (Only a mix keeps the keys: any other run's memory stays flat.)"""
        if self._fractions:
            self._done.add(item.key)

    async def _run_item(self, item: PlanItem) -> None:
        rec = self.recorder
        ctx = ItemContext(self, item)
        try:
            outcome = await produce(self, item, ctx)
            rec.emit_plain(ItemDone, item=item.key, strategy=item.strategy, outcome=outcome)
            self._mark_done(item)
            if ctx.refused is not None:  # a sample made of less than it asked for: the budget ended all the same
                self._budget_hit(item, ctx.refused)
            endless = (self._free_items.observe(item.strategy, ctx.fresh)
                       or self._unbounded.observe(item.strategy, ctx.fresh, ctx.fresh_bounded))
            if endless is not None:
                self._plugin_failed(endless)
        except BudgetExhausted as exc:
            self._budget_hit(item, exc)
            self._bounced.append(item)
        except (RunStopping, WriterFailed):
            pass  # not done: a resume runs the item again, its settled answers come from the store
        except QueryFailed as exc:
            rec.emit(SampleRejected(item=item.key, strategy=item.strategy, stage="failed", reason=str(exc)))
            rec.emit(ItemDone(item=item.key, strategy=item.strategy, outcome="failed"))
            self._mark_done(item)
        except FatalRunError as exc:
            self._fail(str(exc))
        except PluginFailed as exc:
            self._plugin_failed(str(exc))
        except Exception as exc:  # the strategy's or verifier's own code: one line, where it raised
            self._plugin_failed(failure(f"item {item.key!r} of {host.get_host().describe('strategies', item.strategy)}",
                                        exc))
        finally:
            self.admission.finish(item)
            self._in_flight_items -= 1
            self._running[item.strategy] -= 1
            self._notify_item()


    def _budget_hit(self, item: PlanItem, exc: BudgetExhausted) -> None:
        self._refused_by = str(exc) or self._refused_by
        self._budget_hits[item.strategy] = self._budget_hits.get(item.strategy, 0) + 1


def _first(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc`, or the first in its group (task groups wrap), that is a `kind`."""
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", None) or ():
        found = _first(inner, kind)
        if found is not None:
            return found
    return None


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """`exc` is a `kind`, or a group (task groups wrap) of nothing else."""
    inner = getattr(exc, "exceptions", None)
    if inner is None:
        return isinstance(exc, kind)
    return all(_only(e, kind) for e in inner)
