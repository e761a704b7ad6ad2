"""A generation run's session: its parts, its store, and how it starts - a new run (name checked,
`run_started` committed with the run row) or the resume of one (plan checked, state replayed,
lease taken, `run_resumed`) - with the journal, ledger, admission and dispatcher around it."""

from __future__ import annotations

import copy
import os
import socket
from typing import Any, Callable

from ... import __version__
from ...store.errors import ConcurrencyError, NameTaken, RunMovedOn
from ...store.eventstore import EventStore, NewEvent, RunNotFound, StoreMissing, owner_token
from ...store import writer_process
from ...store.records import FINISHED
from ...store.writer_process import WriterProcess

from .admission import Admission
from .assemble import Parts, build_endpoints, build_parts, repeated_seeds
from .config import RunConfig
from .dedupe import NearDuplicateIndex
from .dispatcher import Dispatcher
from ..errors import ResumeRefused, RunNameTaken
from ..ledger import crashpoints
from ..ledger.events import (SCHEMA_VERSION, RunFinished, RunResumed, RunStarted, RunWarning,
                             to_payload)
from ..ledger.audit import checked_chain
from ..ledger.journal import HEARTBEAT_S, Journal
from ..ledger.ledger import Ledger
from ..ledger.replay import replay
from ..redact import scrub_payload, scrub_value
from .quality_gate import GATE_EVENTS, QualityGate
from .resume_prices import refuse_unpriced_past
from .reuse import ReuseSource, endpoints_here
from .store_choice import StoreChoice, choose_store, open_store

RESUME_READS = 3  # reads of a run's log a resume makes while its holder keeps appending, before it gives up


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


class RunSession:
    def __init__(self, cfg: RunConfig, store: EventStore | StoreChoice | str | None = None, *,
                 show_progress: bool = True, create: bool = True) -> None:
        self.cfg = cfg
        self.show_progress = show_progress
        # Called the moment the run's first write is in (a new run's start, a resume's lease): until
        # then a stop signal may end the process with nothing recorded (see start_wait.py).
        self.first_write: Callable[[], None] = lambda: None
        # Everything that can fail on bad input happens before the store is even opened.
        self.parts: Parts = build_parts(cfg)
        self.endpoints = build_endpoints(cfg, self.parts.roles)
        self.warnings: list[str] = [*self.parts.verifier.start_warnings(self.parts.seeds),
                                    *repeated_seeds(self.parts.seeds)]
        if isinstance(store, EventStore):
            self.store_choice = StoreChoice(store.url, "the caller")
            self.store = store
        else:
            self.store_choice = (store if isinstance(store, StoreChoice)
                                 else choose_store(store, cfg.run.store, "the run config"))
            try:
                self.store = open_store(self.store_choice, create=create)
            except StoreMissing as exc:  # a resume: the path is mistyped, or the run never got so far
                raise StoreMissing(f"{exc}; a run killed before its store existed recorded and paid nothing: "
                                   "start it without --resume") from None
        self._ran = False
        self._writer: WriterProcess | None = None
        self._samples_before = (0, 0)  # (accepted, rejected) by earlier sessions of a resumed run
        self.owner = owner_token()
        self._dedupe: NearDuplicateIndex | None = None
        self._dedupe_pending: list[tuple[str, str]] = []
        self.recorder: Journal
        self.dispatcher: Dispatcher
        self.ledger: Ledger
        self.admission: Admission

    def hard_stop(self) -> None:  # the Runner's: what a refused commit triggers
        raise NotImplementedError

    def _unique_endpoints(self) -> list[Any]:
        return list({id(e): e for e in self.endpoints.values()}.values())

    def _admission(self) -> Admission:
        return Admission(self.ledger, self.endpoints, self.parts.strategy, self.parts.verifier, warn=self._warn)

    def _recorder(self, run_id: str, last_seq: int, head: str) -> Journal:
        """The run's event writer, with the budget ledger subscribed: heartbeats well inside the
        lease, and stops the run at once if a commit is refused (store unwritable, lease taken over)."""
        self._writer = WriterProcess(self.store) if writer_process.wanted(self.store) else None
        journal = Journal(self.store, run_id, last_seq, head, self.owner,
                          heartbeat_s=min(HEARTBEAT_S, self.cfg.run.lease_ttl_s / 3),
                          on_failure=lambda _exc: self.hard_stop(), appender=self._writer)
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
        # The name is checked again under the insert's lock: another process may have started a run
        # of this name since the look above (two `generate` of one config at once).
        try:
            run_id, last, head = self.store.start_run(cfg.run.name, scrub_value(cfg.snapshot()), cfg.config_hash(),
                                                      [NewEvent(type_, scrub_payload(payload), SCHEMA_VERSION)],
                                                      owner=self.owner, unique_name=True)
        except NameTaken:
            self._check_name_free(cfg.run.name)  # says which run has it, and how to go on
            raise
        self.first_write()
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
        for _ in range(RESUME_READS):
            info_before = self.store.get_run(run_id)
            state = self._fold_for_resume(run_id, info_before)
            try:  # only while the log still ends where it was read (a holder thought gone may live)
                self.store.acquire(run_id, self.owner, ttl_s=self.cfg.run.lease_ttl_s, at_seq=info_before.last_seq)
                self.first_write()
                break
            except RunMovedOn:
                continue  # read it again: its holder may now be seen alive, or it finished
        else:
            raise ConcurrencyError(f"run {run_id} kept moving on while this resume read it: another process is "
                                   "extending it; wait for it to finish or stop it first")
        info = self.store.get_run(run_id)
        self.ledger = state.ledger
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

    def _fold_for_resume(self, run_id: str, info: Any) -> Any:
        """The run's state from its log as it ends now, refused if its chain is damaged, its plan is
        not this config's, or this config's budget is below what it spent."""
        events = self.store.iter_events(run_id)
        state = replay(checked_chain(events, (info.last_seq, info.head_hash),
                                     lambda v: ResumeRefused(f"run {run_id} cannot be resumed: its event log is "
                                                             f"damaged at seq {v.seq} ({v.message}); `audit "
                                                             f"{run_id}` reports it")))
        if state.plan_hash != self.cfg.plan_hash():
            diffs = _diff(self._plan_view_of(state.config or {}), self.cfg.plan_view())
            raise ResumeRefused(
                f"run {run_id} was started with a different plan; refusing to mix them. Changed:\n  "
                + "\n  ".join(diffs or ["(plan hash differs)"]))
        # As the ledger will stand once this resume is recorded: what was reserved and never sent
        # released, what was out counted spent (QA: 16 reserved, never sent, were counted).
        resumed = copy.deepcopy(state.ledger)
        resumed.apply(info.last_seq + 1, RunResumed.TYPE, {})
        over_before = _overruns(resumed)  # (a provider that billed past its cap: not this resume's doing)
        resumed.spec = self.parts.budget  # budgets and limits may change between sessions, but not
        _refuse_a_budget_below_spend(run_id, resumed, over_before)  # below what is spent
        refuse_unpriced_past(self.store, run_id, self.cfg, state.ledger.by_model)
        state.ledger.spec = self.parts.budget
        return state

    def prices(self) -> dict[str, dict[str, Any]]:
        """The price each model is counted at, as recorded in the run's events."""
        return {ep.model: ep.price.as_dict() for ep in self.endpoints.values() if ep.price is not None}

    def _check_name_free(self, name: str) -> None:
        """One name, one run: a second run under a finished run's name would pay for every query
        again and leave `show NAME` / `export NAME` ambiguous. (A row with no events, which an older
        release left when killed before its first commit, holds no name: it never started.)"""
        taken = [r for r in self.store.list_runs(name=name) if r.last_seq > 0]
        if not taken:
            self._check_name_is_no_id(name)
            return
        r = taken[-1]
        unfinished = r.kind == "generate" and r.status not in FINISHED
        cont = "pass --resume to continue it" if unfinished else f"pass --run {r.id} to continue it"
        raise RunNameTaken(f"run name {name!r} is taken by run {r.id} ({r.kind}, {r.status}); {cont}, "
                           "or --name NEW to start another run")

    def _check_name_is_no_id(self, name: str) -> None:
        """A run reference is an id first: a run named with another run's id could be reached by
        its own id alone (`show NAME` showed the other run)."""
        try:
            other = self.store.get_run(name)
        except RunNotFound:
            return
        raise RunNameTaken(f"run name {name!r} is the id of run {other.id} ({other.name}); names and ids are "
                           "both run references, so choose another name")

    def abandon_unstarted(self, why: str) -> None:
        """A run started but never driven (its event loop could not start, an interrupt came first)
        is closed as failed, so no run is left looking `running` forever."""
        if self._ran or not hasattr(self, "recorder"):
            return
        try:
            self.recorder.emit(RunFinished(status="failed", message=why))
            self.recorder.commit_now()
        finally:
            self.close_writer()
            self.store.release(self.recorder.run_id, self.owner, "failed")

    def close_writer(self) -> None:
        """End the child process that committed the run's events, if it had one (see writer_process)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _plan_view_of(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        try:
            return RunConfig.model_validate(snapshot).plan_view()
        except Exception:
            return snapshot

    def _init_dedupe(self, admitted: list[str]) -> None:
        d = self.cfg.dedupe
        if not d.enabled:
            return
        self._dedupe = NearDuplicateIndex(threshold=d.threshold, ngram=d.ngram, seed=self.cfg.run.seed)
        self._dedupe_pending = [(s.question, f"seed {s.id}") for s in self.parts.seeds]
        self._dedupe_pending += [(q, f"question {i}") for i, q in enumerate(admitted)]

    @property
    def dedupe(self) -> NearDuplicateIndex | None:
        """The questions index, filled on first use: only strategies that write questions check
        it, and indexing thousands of seeds up front was a visible part of every run's start-up."""
        if self._dedupe is not None and self._dedupe_pending:
            pending, self._dedupe_pending = self._dedupe_pending, []
            for text, ref in pending:
                self._dedupe.add(text, ref)
        return self._dedupe

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
                "find_reusable": ReuseSource(self.store, lambda: self.recorder.run_id,
                                             here=endpoints_here(self.cfg.snapshot())).find if self.cfg.run.reuse else None}

    def _warn(self, kind: str, message: str) -> None:
        self.recorder.emit(RunWarning(kind=kind, message=message))

    def _init_gate(self, earlier: Any = ()) -> None:
        q = self.cfg.quality
        self.gate = QualityGate(self.parts.task, keep_truncated=q.keep_truncated,
                                keep_duplicates=q.keep_duplicate_answers, warn=self._warn)
        self.gate.load(earlier)


def _overruns(ledger: Any) -> dict[tuple[str, str], tuple[float, float]]:
    """(scope, dimension) -> (used, limit) wherever spent + reserved is over the ledger's limits."""
    out = {}
    for scope in sorted(set(ledger.spent) | set(ledger.reserved)):
        limits = ledger.spec.limits_of(scope)
        for dim, used, limit in ledger.overruns(scope, limits) if limits is not None else ():
            out[(scope, dim)] = (used, limit)
    return out


def _refuse_a_budget_below_spend(run_id: str, ledger: Any, over_before: dict[tuple[str, str], Any]) -> None:
    """A resume may keep a budget, raise it, or lower it to what the run has spent (counting what was
    out when its last session ended, which counts as spent). Lowered below that, the resumed run
    stopped at once and `audit` failed it for good at every later settlement ("spent+reserved 37 >
    limit 5"), though nothing went over what was set when it was sent."""
    for (scope, dim), (used, limit) in _overruns(ledger).items():
        if (scope, dim) not in over_before:
            raise ResumeRefused(f"run {run_id} has already spent {used:g} {dim} in its {scope} budget (with what was "
                                f"out when it stopped), more than the {limit:g} now set; a resume may keep or raise "
                                "a budget, or lower it to no less than what is spent")
