"""Ctrl-C and SIGTERM stop `generate` even while a plugin's synchronous code holds the event loop.

QA: a strategy whose `run()` called `time.sleep(600)` (or spun) made both do nothing until it
returned: the loop that takes them never got control, and only `kill -9` stopped the process. Now
the process ends hard a few seconds later (at once on a further signal), says so in one line, and
the run resumes without asking again what was settled. A loop that is not blocked still stops
gracefully, and a run that ends normally leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from synthledger.engine.run.stop_watchdog import AGAIN_S, THREAD_NAME, UNHEARD_S
from synthledger.testing.projects import write_project
from synthledger.testing.server import ServerConfig, run_in_thread

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / "cli.py")
SEEDS = 4

# A third-party strategy, installed as an outside author's would be (a distribution with an entry
# point, here written by hand: no build). With $SLEEPY_MARK set, the item of seed `block_at`, once
# its answer is in, touches that file and holds the event loop: sleeping, or spinning ($SLEEPY_HOW).
PLUGIN = '''
import os
import time
from typing import ClassVar, Iterator

from synthledger.engine.api import Context, PlanItem, PluginOptions, Sample, Strategy
from synthledger.engine.hookspecs import hookimpl


class SleepyStrategy(Strategy):
    name: ClassVar[str] = "sleepy"
    roles: ClassVar[tuple[str, ...]] = ("teacher",)

    class Options(PluginOptions):
        block_at: int = 1

    def plan(self) -> Iterator[PlanItem]:
        mark = os.environ.get("SLEEPY_MARK")
        if mark and os.environ.get("SLEEPY_WHERE") == "plan":  # before the run's first await
            open(mark, "w").close()
            time.sleep(600)
        for seed in self.seeds:
            yield PlanItem(key=f"sleepy:{seed.id}", strategy=self.name, seed=seed)

    async def run(self, item: PlanItem, ctx: Context) -> Sample | None:
        text = await ctx.ask("teacher", [{"role": "user", "content": item.seed.question}], purpose="answer",
                             sample_index=item.sample_index)
        mark = os.environ.get("SLEEPY_MARK")
        if mark and item.seed is self.seeds[self.options.block_at]:
            open(mark, "w").close()
            if os.environ.get("SLEEPY_HOW") == "spin":
                while True:
                    pass
            time.sleep(float(os.environ.get("SLEEPY_FOR", "600")))
        return Sample(question=item.seed.question, answer=text.strip(), seed_id=item.seed.id, strategy=self.name)


@hookimpl
def register_strategies(register):
    register(SleepyStrategy.name, SleepyStrategy)
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> str:
    site = tmp_path_factory.mktemp("sleepy_site")
    (site / "synthledger_sleepy.py").write_text(PLUGIN)
    info = site / "synthledger_sleepy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: synthledger-sleepy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[synthledger]\nsleepy = synthledger_sleepy\n")
    return str(site)


@pytest.fixture(scope="module")
def server():
    with run_in_thread() as srv:
        yield srv


def _env(plugin_path: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **extra}
    env.pop("SYNTHLEDGER_PLUGINS", None)
    env.pop("SYNTHLEDGER_STORE", None)
    env["PYTHONPATH"] = plugin_path + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _project(tmp_path: Path, url: str, concurrency: int = 1, seeds: int = SEEDS) -> str:
    """A run of `seeds` items, one query each; the budget leaves room for a query asked again
    (one whose answer was on its way, not yet settled, when the process ended)."""
    write_project(tmp_path, url, name="sleepy-run", queries=2 * seeds, seeds=seeds, strategy="sleepy",
                  extra=f"\n[limits]\nmax_concurrency = {concurrency}\n")
    return f"sqlite:///{tmp_path / 'store.db'}"


def _cli(plugin_path: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CLI, *args], cwd=cwd, env=_env(plugin_path), capture_output=True,
                          text=True, timeout=120)


def _start_blocking(plugin_path: str, tmp_path: Path, store: str, how: str = "sleep",
                    where: str = "run") -> subprocess.Popen:
    """`generate` started, and returned once the plugin holds the loop."""
    mark = tmp_path / "blocking"
    proc = subprocess.Popen([sys.executable, CLI, "generate", "-c", "run.toml", "--no-progress", "--store", store],
                            cwd=tmp_path, env=_env(plugin_path, SLEEPY_MARK=str(mark), SLEEPY_HOW=how,
                                                   SLEEPY_WHERE=where),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not mark.exists():
        proc.kill()
        pytest.fail(f"the plugin never blocked: {proc.communicate(timeout=30)}")
    time.sleep(0.3)  # (well inside time.sleep / the spin by now)
    return proc


def _ended(proc: subprocess.Popen, failure: str) -> tuple[str, str]:
    """The process's output once it ended by itself; killed (and the test failed) if it would not."""
    try:
        return proc.communicate(timeout=UNHEARD_S + 25)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{failure}: {proc.communicate(timeout=30)}")


def _resumes_and_audits(plugin_path: str, tmp_path: Path, store: str, server, received_before: int) -> None:
    """`generate --resume` finishes the run and the audit holds; what was settled before the hard
    stop is not asked again, and every request the server saw is in the ledger."""
    res = _cli(plugin_path, tmp_path, "generate", "--resume", "--no-progress", "--store", store)
    assert res.returncode == 0 and "completed" in res.stdout, res.stdout + res.stderr
    audit = _cli(plugin_path, tmp_path, "audit", "sleepy-run", "--json", "--store", store)
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["ok"], audit.stdout + audit.stderr
    con = sqlite3.connect(tmp_path / "store.db")
    events = [(t, json.loads(p)) for t, p in con.execute("SELECT type, payload FROM events ORDER BY seq")]
    con.close()
    resumed = [t for t, _ in events].index("run_resumed")
    settled_before = {p["query_id"] for t, p in events[:resumed] if t == "query_settled"}
    sent_after = {p["query_id"] for t, p in events[resumed:] if t == "query_dispatched"}
    assert settled_before and not settled_before & sent_after, (settled_before, sent_after)
    assert sum(t == "sample_accepted" for t, _ in events) == SEEDS
    sent = sum(t == "query_dispatched" for t, _ in events)
    assert server.stats()["received"] - received_before == sent


@pytest.mark.parametrize("sig, how", [(signal.SIGINT, "sleep"), (signal.SIGTERM, "spin")])
def test_a_signal_stops_a_run_whose_plugin_blocks_the_loop(plugin_path, server, tmp_path, sig, how):
    store = _project(tmp_path, server.url)
    before = server.stats()["received"]
    proc = _start_blocking(plugin_path, tmp_path, store, how)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = _ended(proc, f"{sig.name} did not stop a run whose loop is blocked")
    waited = time.monotonic() - t0
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert UNHEARD_S - 0.5 <= waited < UNHEARD_S + 20, waited
    said = [line for line in err.splitlines() if "stopped hard" in line]
    assert len(said) == 1 and "Traceback" not in err + out, err
    assert said[0].startswith(f"synthledger: stopped hard on {sig.name}: the event loop was blocked for "), said
    assert "synthledger_sleepy.py:" in said[0] and "run()" in said[0], said  # where it is blocked
    assert said[0].endswith(f"`python cli.py generate --resume --store {tmp_path / 'store.db'}` continues the run"), said
    _resumes_and_audits(plugin_path, tmp_path, store, server, before)


def test_a_signal_stops_a_run_whose_plan_blocks_before_the_loop_first_yields(plugin_path, server, tmp_path):
    """The run's first steps (the plan's first items) are synchronous: a plan blocking there held the
    stop signals for as long as it blocked, watchdog unarmed (QA: SIGTERM ignored for a minute)."""
    store = _project(tmp_path, server.url)
    proc = _start_blocking(plugin_path, tmp_path, store, where="plan")
    proc.send_signal(signal.SIGTERM)
    out, err = _ended(proc, "SIGTERM did not stop a run whose plan blocks at its start")
    assert proc.returncode == 143, (proc.returncode, err)
    said = [line for line in err.splitlines() if "stopped hard" in line]
    assert len(said) == 1 and "plan()" in said[0] and "Traceback" not in err + out, err


def test_a_further_signal_stops_a_blocked_run_at_once(plugin_path, server, tmp_path):
    store = _project(tmp_path, server.url)
    before = server.stats()["received"]
    proc = _start_blocking(plugin_path, tmp_path, store)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = _ended(proc, "two SIGINTs did not stop a run whose loop is blocked")
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < AGAIN_S + 3 < UNHEARD_S  # not the single signal's wait
    said = [line for line in err.splitlines() if "stopped hard" in line]
    assert len(said) == 1 and said[0].startswith("synthledger: stopped hard on a further SIGINT:"), err
    assert "Traceback" not in err + out
    _resumes_and_audits(plugin_path, tmp_path, store, server, before)


def test_a_loop_that_is_not_blocked_still_stops_gracefully(plugin_path, tmp_path):
    with run_in_thread(ServerConfig(latency_ms=300)) as slow:
        store = _project(tmp_path, slow.url, concurrency=2, seeds=12)
        proc = subprocess.Popen([sys.executable, CLI, "generate", "-c", "run.toml", "--no-progress", "--store",
                                 store], cwd=tmp_path, env=_env(plugin_path), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while _settled(tmp_path) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "interrupted" in out, (out, err)
    assert "stopping:" in err and "stopped hard" not in err and "Traceback" not in err, err
    audit = _cli(plugin_path, tmp_path, "audit", "sleepy-run", "--json", "--store", store)
    report = json.loads(audit.stdout)
    assert report["ok"] and report["status"] == "interrupted" and report["counts"]["lost"] == 0, report


def test_nothing_more_is_sent_once_a_signal_came_during_a_short_block(plugin_path, tmp_path):
    """QA: Ctrl-C while a plugin held the loop for a moment (shorter than the watchdog's wait): when
    the block ended, the items that were ready went on, and more requests went out before the loop
    took the signal. The signal is noted as it comes; nothing is sent after it."""
    with run_in_thread(ServerConfig(latency_ms=50)) as srv:
        store = _project(tmp_path, srv.url, concurrency=3, seeds=12)
        mark = tmp_path / "blocking"
        proc = subprocess.Popen([sys.executable, CLI, "generate", "-c", "run.toml", "--no-progress", "--store",
                                 store], cwd=tmp_path, env=_env(plugin_path, SLEEPY_MARK=str(mark), SLEEPY_FOR="2"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.5)  # the loop is held; the requests that were out have come back by now
        sent_before = srv.stats()["received"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        sent_after = srv.stats()["received"]
    assert proc.returncode == 1 and "interrupted" in out and "stopped hard" not in err, (out, err)
    assert sent_after == sent_before, (sent_before, sent_after)
    audit = _cli(plugin_path, tmp_path, "audit", "sleepy-run", "--json", "--store", store)
    report = json.loads(audit.stdout)
    assert report["ok"] and report["status"] == "interrupted" and report["counts"]["lost"] == 0, report


def _settled(folder: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{folder / 'store.db'}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM events WHERE type = 'query_settled'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_a_run_that_ends_normally_leaves_no_watchdog_and_its_callers_handlers(tmp_path):
    from synthledger.engine.run.config import config_from_dict
    from synthledger.engine.run.launch import generate

    def mine(signum, frame):  # a program using the Python API, with handlers of its own
        pass

    previous = {sig: signal.signal(sig, mine) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with run_in_thread() as srv:
            (tmp_path / "seeds.jsonl").write_text(json.dumps({"question": "1 + 1?", "answer": "#### 2"}) + "\n")
            cfg = config_from_dict({
                "run": {"name": "plain", "store": f"sqlite:///{tmp_path / 'store.db'}"},
                "seeds": {"source": "jsonl", "path": str(tmp_path / "seeds.jsonl")},
                "teacher": {"provider": "openai-compatible", "base_url": srv.url + "/v1", "model": "m",
                            "max_tokens": 64},
                "budget": {"queries": 1}, "strategy": {"name": "answer_augmentation"}})
            result = generate(cfg, show_progress=False)
        assert result.status in ("completed", "budget_exhausted"), result.message
        assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---- the watchdog alone, in a process of its own (it may end it) ----------------------------------

WATCHED = '''
import signal, sys, time
from synthledger.engine.run.stop_watchdog import StopWatchdog

signal.signal(signal.SIGTERM, lambda s, f: None)  # (the loop's handler: notes, but nobody takes it)
dog = StopWatchdog({{signal.SIGTERM}}, "the hint", after_s=1.0)
dog.arm()
{body}
'''


def _watched(body: str) -> subprocess.CompletedProcess:
    script = WATCHED.format(body=body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_a_signal_the_loop_takes_in_time_never_ends_the_process():
    r = _watched("import os\nfor _ in range(3):\n    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2); "
                 "dog.heard(signal.SIGTERM); time.sleep(0.3)\n"
                 "for _ in range(6):\n    dog.tick(); time.sleep(0.25)  # (the loop runs on)\nprint('alive')")
    assert r.returncode == 0 and r.stdout == "alive\n" and not r.stderr, r.stderr


def test_a_disarmed_watchdog_leaves_the_process_and_its_handlers_alone():
    r = _watched("import os, threading\nhandler = signal.getsignal(signal.SIGTERM)\ndog.disarm()\n"
                 "assert not [t for t in threading.enumerate() if t.name != 'MainThread'], threading.enumerate()\n"
                 "assert signal.getsignal(signal.SIGTERM) is not handler  # the loop's own again\n"
                 "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(2)\nprint('alive')")
    assert r.returncode == 0 and r.stdout == "alive\n" and not r.stderr, r.stderr


def test_an_untaken_signal_ends_the_process_hard_with_one_line():
    r = _watched("import os\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(30)\nprint('alive')")
    assert r.returncode == 143 and not r.stdout, r
    assert r.stderr.startswith("synthledger: stopped hard on SIGTERM: the event loop was blocked for 1s")
    assert r.stderr.endswith("the hint\n") and r.stderr.count("\n") == 1, r.stderr


def test_a_loop_that_blocks_while_the_run_stops_ends_the_process_hard():
    """The loop took the signal, then a plugin's synchronous code blocked it during the grace: the stop
    waited for it for good, until a second signal (QA: alive 8 s on). A loop that stops ticking for
    the watchdog's wait once a stop is under way is blocked."""
    r = _watched("import os\nos.kill(os.getpid(), signal.SIGTERM); time.sleep(0.1); dog.heard(signal.SIGTERM)\n"
                 "time.sleep(30)\nprint('alive')")
    assert r.returncode == 143 and not r.stdout, r
    assert r.stderr.startswith("synthledger: stopped hard after SIGTERM: the run was stopping, but its event loop "
                               "has been blocked for 1s"), r.stderr


def test_a_plugin_that_blocks_during_the_grace_does_not_hold_the_stop_for_good(plugin_path, tmp_path):
    """Ctrl-C taken by a healthy loop, then an answer in flight comes back in the grace and the plugin
    blocks on it: the stop waited for the plugin for good, until a second signal (QA)."""
    mark = tmp_path / "blocking"
    with run_in_thread(ServerConfig(latency_ms=1500)) as slow:
        store = _project(tmp_path, slow.url, concurrency=1)
        proc = subprocess.Popen([sys.executable, CLI, "generate", "-c", "run.toml", "--no-progress", "--store",
                                 store], cwd=tmp_path, env=_env(plugin_path, SLEEPY_MARK=str(mark)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while _settled(tmp_path) < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # the loop waits on the next answer: it takes the signal at once
        out, err = _ended(proc, "a plugin blocking during the stop's grace held the process")
    assert mark.exists() and "stopping:" in err, err  # the graceful stop began, then the plugin blocked
    assert proc.returncode == 130, (proc.returncode, err)
    said = [line for line in err.splitlines() if "stopped hard" in line]
    assert len(said) == 1 and said[0].startswith("synthledger: stopped hard after SIGINT: the run was stopping, "
                                                 "but its event loop has been blocked for "), err
    assert "synthledger_sleepy.py:" in said[0] and "Traceback" not in err + out, err
