"""A run's event commits done by a child process (store/writer_process): the run uses one on a
SQLite file store, and every way that child or its parent can end keeps the ledger exact - the
child killed mid-run, a Ctrl-C at the terminal (which signals the whole foreground group), the run
killed with the child still alive. `SYNTHLEDGER_EVENT_WRITER=thread` keeps commits in-process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from synthledger.engine.ledger.audit import checked_chain
from synthledger.store.errors import ConcurrencyError, StoreError
from synthledger.store.eventstore import EventStore, owner_token
from synthledger.store.records import NewEvent
from synthledger.store.writer_process import ENV_WRITER, WriterProcess
from synthledger.testing.projects import write_project
from synthledger.testing.reliability import ServerProcess, check_run_exact, run_events

ROOT = Path(__file__).resolve().parents[1]
MARK = "store.writer_child"  # in the child's command line (its bootstrap names the module)


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--latency-ms", "40") as srv:
        yield srv


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SYNTHLEDGER_STORE", ENV_WRITER)}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def _args(tmp: Path, config: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "generate", "--config", str(config), "--no-progress",
            "--store", f"sqlite:///{tmp / 'store.db'}", *args]


def _start(tmp: Path, config: Path, **env: str) -> subprocess.Popen:
    """`generate` in a session of its own, as a terminal's foreground job is its own group."""
    return subprocess.Popen(_args(tmp, config), cwd=tmp, env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _resume(tmp: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_args(tmp, config, "--resume"), cwd=tmp, env=_env(), capture_output=True, text=True,
                          timeout=120)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _writers(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for child in map(int, children):
        try:
            if MARK in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                out.append(child)
        except OSError:
            pass
    return out


def _wait_for(what: str, check, proc: subprocess.Popen, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"generate ended before {what}: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _settled(db: Path) -> set[str]:
    try:
        return {p["query_id"] for _, t, p, _ in run_events(db) if t == "query_settled"}
    except Exception:  # not created yet
        return set()


def _project(tmp: Path, url: str, queries: int) -> Path:
    return write_project(tmp, url, seeds=6, queries=queries, extra="\n[limits]\nmax_concurrency = 4\n")


def _run_id(out: str) -> str:
    return [ln for ln in out.splitlines() if ln.strip()][-1].split()[1]


def _status(out: str) -> str:
    return [ln for ln in out.splitlines() if ln.strip()][-1].split()[2]


def _mid_run(tmp: Path, url: str) -> tuple[Path, Path, subprocess.Popen, int]:
    """A 200-query run started and some answers settled: (config, store file, process, writer pid)."""
    config = _project(tmp, url, 200)
    db = tmp / "store.db"
    proc = _start(tmp, config)
    writer = _wait_for("its writer process", lambda: _writers(proc.pid), proc)[0]
    _wait_for("answers to settle", lambda: len(_settled(db)) >= 10, proc)
    return config, db, proc, writer


def _resumes_exactly(tmp: Path, config: Path, budget: int) -> dict:
    resumed = _resume(tmp, config)
    assert resumed.returncode == 0, resumed.stderr
    return check_run_exact(f"sqlite:///{tmp / 'store.db'}", _run_id(resumed.stdout), budget)


def test_a_run_commits_through_its_own_writer_process_which_ends_with_it(tmp_path, server):
    config = _project(tmp_path, server.url, 40)
    proc = _start(tmp_path, config)
    writer = _wait_for("its writer process", lambda: _writers(proc.pid), proc)[0]
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert not _alive(writer), "the writer process outlived its run"
    check_run_exact(f"sqlite:///{tmp_path / 'store.db'}", _run_id(out), 40)


def test_the_writer_process_killed_mid_run_stops_it_in_one_line_and_a_resume_completes_exactly(tmp_path, server):
    config, db, proc, writer = _mid_run(tmp_path, server.url)
    os.kill(writer, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("store ")]  # (which store it used)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert "cannot write to the store" in lines[0] and "ended unexpectedly (killed by signal 9)" in lines[0], lines[0]
    assert "generate --resume" in lines[0], lines[0]
    before = _settled(db)
    assert 0 < len(before) < 200
    result = _resumes_exactly(tmp_path, config, 200)
    assert before <= set(result["settled"]), "answers settled before the writer died were lost"


def test_a_ctrl_c_at_the_terminal_stops_the_run_and_its_writer_still_records_the_end(tmp_path, server):
    # A terminal's Ctrl-C signals every process of the foreground group: the writer must not die of
    # it, or the run's last events (its in-flight answers, `run_finished`) could not be committed.
    config, db, proc, writer = _mid_run(tmp_path, server.url)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and _status(out) == "interrupted", (out, err)
    assert "Traceback" not in err, err
    finished = [p for _, t, p, _ in run_events(db) if t == "run_finished"]
    assert [p["status"] for p in finished] == ["interrupted"], finished
    assert not _alive(writer)
    _resumes_exactly(tmp_path, config, 200)


def test_a_killed_run_leaves_no_writer_behind_and_resumes_exactly(tmp_path, server):
    config, db, proc, writer = _mid_run(tmp_path, server.url)
    os.killpg(proc.pid, signal.SIGKILL)  # the run's group; the writer is in its own
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(writer) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(writer), "the writer process outlived a killed run by 10 s"
    _resumes_exactly(tmp_path, config, 200)


def test_with_the_thread_writer_asked_for_no_writer_process_starts(tmp_path, server):
    config = _project(tmp_path, server.url, 40)
    proc = _start(tmp_path, config, **{ENV_WRITER: "thread"})
    seen = []
    while proc.poll() is None:
        seen += _writers(proc.pid)
        time.sleep(0.01)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen == []
    check_run_exact(f"sqlite:///{tmp_path / 'store.db'}", _run_id(out), 40)


# ---- the proxy against a store, call by call ----------------------------------------------------------

def _events(n: int, start: int = 0) -> list[NewEvent]:
    return [NewEvent("run_warning", {"kind": "note", "message": f"event {start + i}"}) for i in range(n)]


def test_the_writer_appends_what_the_store_would_and_refuses_what_it_would_in_its_words(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'a.db'}")
    twin = EventStore(f"sqlite:///{tmp_path / 'b.db'}")  # the same appends, made in-process
    me = owner_token()
    writer = WriterProcess(store)
    try:
        runs = [s.start_run("r", {}, "h", _events(1), owner=me, run_id="run1") for s in (store, twin)]
        (run_id, last, head), (_, twin_last, twin_head) = runs
        seq, new_head = writer.append(run_id, _events(3, 1), last, head, owner=me)
        assert seq == twin.append(run_id, _events(3, 1), twin_last, twin_head, owner=me)[0] == 4
        writer.heartbeat(run_id, me)
        assert [(e.seq, e.type, e.payload) for e in store.iter_events(run_id)] == \
            [(e.seq, e.type, e.payload) for e in twin.iter_events(run_id)]
        list(checked_chain(store.iter_events(run_id), (seq, new_head), AssertionError))  # the chain links up
        assert store.get_run(run_id).head_hash == new_head
        with pytest.raises(ConcurrencyError) as remote:  # stale: the run moved on
            writer.append(run_id, _events(1, 9), last, head, owner=me)
        with pytest.raises(ConcurrencyError) as local:
            twin.append(run_id, _events(1, 9), twin_last, twin_head, owner=me)
        assert str(remote.value) == str(local.value)
        with pytest.raises(ConcurrencyError, match="lost the lease"):
            writer.heartbeat(run_id, "someone-else")
    finally:
        writer.close()
        store.close()
        twin.close()
    with pytest.raises(StoreError, match="closed"):
        writer.append(run_id, _events(1), 4, "x", owner=me)


@dataclass
class OneRun:
    """A store holding one run (its first event written), and a writer process for it."""
    store: EventStore
    writer: WriterProcess
    run_id: str
    owner: str
    last: int
    head: str


@pytest.fixture
def one_run(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'a.db'}")
    me = owner_token()
    run_id, last, head = store.start_run("r", {}, "h", _events(1), owner=me)
    writer = WriterProcess(store)
    try:
        yield OneRun(store, writer, run_id, me, last, head)
    finally:
        writer.close()
        store.close()


def test_a_writer_whose_process_died_says_so_in_one_line(one_run, tmp_path):
    r = one_run
    r.writer.heartbeat(r.run_id, r.owner)
    os.kill(r.writer._proc.pid, signal.SIGKILL)
    r.writer._proc.wait(10)
    with pytest.raises(StoreError, match=r"ended unexpectedly \(killed by signal 9\)") as died:
        r.writer.append(r.run_id, _events(2), r.last, r.head, owner=r.owner)
    assert "\n" not in str(died.value) and str(tmp_path) in str(died.value)


def test_a_call_from_the_loop_cancelled_in_flight_leaves_the_next_call_its_own_answer(one_run):
    r = one_run

    async def cancelled_in_flight() -> None:
        task = asyncio.create_task(r.writer.aappend(r.run_id, _events(2), r.last, r.head, owner=r.owner))
        await asyncio.sleep(0)  # the request is out; the task waits for the child's answer
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    r.writer.heartbeat(r.run_id, r.owner)  # (the store is open in the child)
    asyncio.run(cancelled_in_flight())
    r.writer.heartbeat(r.run_id, r.owner)  # answered after the cancelled call's answer, which it must skip
    now = r.store.get_run(r.run_id)
    assert now.last_seq == 3  # the child did append: it had the request
    assert r.writer.append(r.run_id, _events(1, 5), now.last_seq, now.head_hash, owner=r.owner)[0] == 4
    head = r.store.get_run(r.run_id).head_hash
    assert asyncio.run(r.writer.aappend(r.run_id, _events(1, 6), 4, head, owner=r.owner))[0] == 5


@pytest.fixture
def no_child(monkeypatch):
    """A writer process that ends at once, before it opens the store (an interpreter that cannot
    import the package as this one did, say)."""
    import synthledger.store.writer_process as wp

    monkeypatch.setattr(wp, "_BOOT", "import sys; sys.exit(3)")


def test_a_writer_whose_process_cannot_start_commits_in_this_process(no_child, one_run):
    # The run commits as it did before the writer process, rather than stop.
    r = one_run
    r.writer.heartbeat(r.run_id, r.owner)
    seq, head = r.writer.append(r.run_id, _events(2), r.last, r.head, owner=r.owner)
    assert asyncio.run(r.writer.aappend(r.run_id, _events(1, 2), seq, head, owner=r.owner))[0] == 4
    assert [e.payload["message"] for e in r.store.iter_events(r.run_id)][1:] == ["event 0", "event 1", "event 2"]
    assert r.writer._proc.poll() == 3


def test_a_run_whose_writer_process_cannot_start_completes_exactly(no_child, tmp_path, server, monkeypatch):
    import synthledger

    monkeypatch.delenv(ENV_WRITER, raising=False)
    config = _project(tmp_path, server.url, 40)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    result = synthledger.generate(str(config), store=store)
    assert result.status == "budget_exhausted", result
    check_run_exact(store, result.run_id, 40)
