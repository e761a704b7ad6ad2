"""Start a generation run and drive it to its end: a new run or the resume of an unfinished one
(with the config it recorded), SIGINT/SIGTERM handled, and from inside a running event loop too."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

import anyio

from ...store import dberrors
from ...store.eventstore import EventStore
from ...store.records import FINISHED
from ..errors import ConfigError, ResumeRefused, RunNameTaken
from ..ledger.budget import DIMENSIONS
from ..ledger.replay import replay
from .abort import start_error
from .collector import tuned_for_a_run
from .eventloop import drive, use_uvloop
from .config import RunConfig
from .runner import Runner, RunResult
from .stacks_on_request import StacksOnRequest
from .start_wait import StartWait
from .stop_watchdog import POLL_S, StopWatchdog, resume_hint
from .store_choice import StoreChoice

# After the first SIGINT/SIGTERM nothing new starts and what is in flight may finish for this long
# (its answers are paid for either way); a second signal, or the end of the grace, cuts it short.
STOP_GRACE_S = 5.0


async def _run_with_signals(runner: Runner, grace_s: float = STOP_GRACE_S, command: str | None = None) -> RunResult:
    """SIGINT/SIGTERM stop a run cleanly: nothing new starts, in-flight requests get `grace_s` to
    finish, and the run is recorded as `interrupted` (a second signal cuts the grace short). Where
    synchronous code (a plugin's) holds the event loop so that it cannot take the signal, the
    process ends hard instead (see stop_watchdog.py).

    Signal handlers belong to the main thread; a run driven from another thread (the Python API
    inside a notebook's event loop) runs without them and is stopped by its caller. The handlers
    the caller had are theirs again once the run ends: the event loop's own cleanup would leave
    SIGTERM at the default (an experiment that went on to train was then killed by a `kill`, its
    run left `running`), and a program using the Python API would lose its own handlers.
    `command`: the command that drove the run ("generate"), whose resume the line said when it ends
    hard names; None for an experiment's cell, which its own command continues (see `resume_hint`)."""
    if threading.current_thread() is not threading.main_thread():
        return await runner.run()
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    # A signal the caller ignores (an experiment's worker ignores Ctrl-C) never ends the process hard.
    watched = {sig for sig, handler in previous.items() if handler is not signal.SIG_IGN}
    try:
        hint = resume_hint(runner.store_choice if command is not None else None)
        return await _run_listening(runner, grace_s, StopWatchdog(watched, hint, on_signal=runner.stop_sending))
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # (None: set outside Python, nothing we can put back)
                signal.signal(sig, handler)


async def _run_listening(runner: Runner, grace_s: float, watchdog: StopWatchdog) -> RunResult:
    """The run, with SIGINT/SIGTERM turned into its clean stop while it lasts. The watchdog is
    armed once the loop listens and disarmed the moment the run is over, however it ends."""

    async def cut_after_grace() -> None:
        await anyio.sleep(grace_s)
        runner.hard_stop()

    async def watch(tg: Any, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            watchdog.arm()  # (before the release: the watching thread starts with the signals held)
            _release_signals()  # one that came while the run started is delivered here, as a clean stop
            task_status.started()
            async for signum in signals:
                watchdog.heard(signum)
                if runner._stopping:
                    runner.hard_stop()
                else:
                    runner.request_stop()
                    tg.start_soon(cut_after_grace)
                    _say_stopping(grace_s)

    async def tick() -> None:  # the loop is running: see StopWatchdog.tick
        while True:
            watchdog.tick()
            await anyio.sleep(POLL_S)

    stacks = StacksOnRequest()
    try:
        async with anyio.create_task_group() as tg:
            # Listening (and the watchdog armed) before the run begins: its first steps (the plan's
            # first items, their costs) are synchronous, and a plugin blocking there held the
            # signals for as long as it blocked (QA: a SIGTERM ignored for a minute).
            await tg.start(watch, tg)
            tg.start_soon(tick)
            tg.start_soon(stacks.serve)
            try:
                return await runner.run()
            finally:
                watchdog.disarm()
                tg.cancel_scope.cancel()
    finally:
        watchdog.disarm()  # (again: a task group that failed before the run began)
        stacks.give_back()  # (after the receiver is gone: leaving, it set the signal to its default)


def _say_stopping(grace_s: float) -> None:
    """Said at once: a run waiting on answers in flight (a local model's batch on a CPU, a slow
    provider) otherwise looked as if the signal had been lost."""
    import sys

    try:
        sys.stderr.write(f"stopping: nothing new starts; what is in flight gets up to {grace_s:g}s to come back "
                         "(Ctrl-C again to stop now)\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _hold_signals() -> None:
    """From the run's first commit until its event loop listens for them, Ctrl-C and SIGTERM wait
    (blocked, so pending) instead of landing in between: there a SIGINT failed the run with a
    false reason and a SIGTERM killed the process with the run left `running`. Main thread only,
    where the loop's receiver is installed; a no-op where the OS has no signal masks."""
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


def _release_signals() -> None:
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def prepare(cfg: RunConfig, store: EventStore | StoreChoice | str | None = None, *, resume: bool = False,
            run_id: str | None = None, show_progress: bool = True, announce: Any = None,
            hold_signals: bool = False) -> Runner:
    """Build a run's parts, open its store and write its first event (or take over a run to resume).

    Bad input fails before any event. Only a new run may create the store. `announce`, when given,
    is called with one line naming the store and why it was chosen (then any start warnings).
    `hold_signals`: SIGINT/SIGTERM wait from the first write until `_run_with_signals` listens
    (the caller releases them if it never gets there)."""
    runner = Runner(cfg, store, show_progress=show_progress, create=not (resume or run_id))
    if announce is not None:
        announce(runner.store_choice.describe())
        for line in runner.warnings:
            announce(f"warning: {line}")
    if hold_signals:
        _hold_signals()
    with StartWait(_STOP_SIGNALS, runner.store.where) if hold_signals else contextlib.nullcontext() as waiting:
        if waiting is not None:
            runner.first_write = waiting.started
        _start(runner, cfg, resume, run_id)
    return runner


def _start(runner: Runner, cfg: RunConfig, resume: bool, run_id: str | None) -> None:
    """The run's first write: a new run's start, or a resume's lease and its `run_resumed`."""
    try:
        if run_id:
            runner.start_resume(runner.store.resolve(run_id).id)
        elif resume and _never_started(runner.store, cfg.run.name):
            try:
                runner.start_new()  # killed before its first commit: `--resume` starts it, as if it had never run
            except RunNameTaken:  # another `--resume` started it just now: resume that (its lease decides)
                runner.start_resume(_latest_unfinished(runner.store, cfg.run.name))
        elif resume:
            runner.start_resume(_latest_unfinished(runner.store, cfg.run.name))
        else:
            runner.start_new()
    except dberrors.DatabaseError as exc:  # the store refused the run's start or its lease (read-only, full, locked)
        raise start_error(runner.store, exc) from None


def event_loop_running() -> bool:
    """True inside a running asyncio loop in this thread (a notebook cell, an async web handler)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def generate(cfg: RunConfig, store: EventStore | StoreChoice | str | None = None, *, resume: bool = False,
             run_id: str | None = None, show_progress: bool = True, announce: Any = None) -> RunResult:
    """Start a run (or resume one) and drive it to the end. Bad input fails before any event.

    Called where an event loop is already running (Jupyter), the run is driven on a worker thread
    with its own loop: a second loop cannot start in the first one's thread. A run that could not
    record its end (store unwritable, lease taken over) raises that reason."""
    if event_loop_running():
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="synthledger-run") as pool:
            return pool.submit(generate, cfg, store, resume=resume, run_id=run_id, show_progress=show_progress,
                               announce=announce).result()
    _refuse_a_zero_budget(cfg)
    uvloop = use_uvloop()
    try:
        runner = prepare(cfg, store, resume=resume, run_id=run_id, show_progress=show_progress, announce=announce,
                         hold_signals=True)
        try:
            with tuned_for_a_run():
                result = drive(_run_with_signals, runner, STOP_GRACE_S, "generate", uvloop=uvloop)
        finally:
            runner.abandon_unstarted("the run could not be started (its event loop failed before the first query)")
    finally:
        _release_signals()  # a signal still held is delivered now, as it would have been
    if result.error is not None:
        raise result.error
    return result


def _refuse_a_zero_budget(cfg: RunConfig) -> None:
    """A total limit of 0 lets no query go: the run took its name, loaded its seeds (a local model's
    too) and ended `budget_exhausted`, exit 0, with nothing. (An experiment's seeds-only cell asks
    for nothing on purpose, through the Runner, not here.)"""
    b = cfg.budget
    zero = [name for name in DIMENSIONS if getattr(b, name) == 0]
    if zero:
        raise ConfigError(f"{cfg.source}: budget.{zero[0]} = 0 lets no query go, so the run could make nothing; "
                          "set it above 0")


def _never_started(store: EventStore, name: str) -> bool:
    """No run of this name holds any event (a run row without events is what an older release left
    when killed between creating a run and recording its start: nothing to resume there)."""
    return all(r.last_seq == 0 for r in store.list_runs(name=name, kind="generate"))


def _latest_unfinished(store: EventStore, name: str | None) -> str:
    every = [r for r in store.list_runs(name=name, kind="generate") if r.last_seq > 0]
    runs = [r for r in every if r.status not in FINISHED]
    if runs:
        return runs[-1].id
    named = f" named {name!r}" if name else ""
    if name and every:  # "start one with --config" led to "run name taken" (QA): say what does go on
        done = every[-1]
        raise ResumeRefused(f"run {done.id} ({name}) has finished ({done.status}) in {store.where}: nothing to "
                            f"resume; to go on with a larger budget: generate --run {done.id} --set budget.queries=N "
                            "(or another limit); to start another run: --name NEW")
    raise ResumeRefused(f"no unfinished run{named} to resume in {store.where}; "
                        "run with --config (and without --resume) to start one")


def recorded_config(store: EventStore, run_ref: str | None = None,
                    overrides: list[str] | None = None, *, name: str | None = None) -> tuple[RunConfig, str]:
    """The config a run last ran with, read back from its events, and the run's id.

    What `generate --resume` without --config continues from: the latest unfinished generation
    run (named `name`, when given), or `run_ref`. Relative paths resolve where the original config file was; `overrides`
    (`section.key=value`) apply on top, as they would to a file."""
    from .config import ConfigError, apply_overrides, config_from_dict

    run_id = store.resolve(run_ref).id if run_ref else _latest_unfinished(store, name)
    info = store.get_run(run_id)
    if info.kind != "generate":
        raise ResumeRefused(f"run {run_id} is a {info.kind!r} run; only generation runs can be resumed")
    state = replay(store.iter_events(run_id))
    snapshot = state.latest_config or state.config
    if snapshot is None:
        raise ConfigError(f"run {run_id} has no recorded config (its run_started event is missing)")
    data = apply_overrides(snapshot, overrides or [])
    return config_from_dict(data, base_dir=state.config_dir or ".", source=f"the recorded config of run {run_id}"), run_id
