"""How the CLI process ends: without the interpreter's module teardown (a third of a second that
every whole-run rate pays), yet with what a normal exit guarantees, in its order: threads that are
not daemons finish, then exit handlers run, then output is flushed, and the exit status is kept; a
Ctrl-C while a thread holds the exit up ends it with 130 and one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(body: str, *, arg: str = "--help", timeout: float) -> subprocess.CompletedProcess:
    """`body` run in a fresh interpreter that has imported the CLI, with `arg` as its command line."""
    preamble = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nsys.argv = ['cli.py', {arg!r}]\nimport cli\n"
    return subprocess.run([sys.executable, "-c", preamble + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "COLUMNS": "120"})


# A command run through cli.main() with a non-daemon thread still working when the command
# returns, an exit handler, and an object that says so if module teardown reaches it.
LATE_THREAD = """
    import atexit, os, threading, time

    class TornDown:
        def __del__(self, write=os.write):  # stdout may be gone by then; fd 1 is not
            write(1, b"torn down\\n")

    KEEP = TornDown()

    def late():
        time.sleep(1.0)  # still running when the command returns
        print("thread finished", flush=True)

    threading.Thread(target=late, name="plugin worker").start()
    atexit.register(lambda: print("exit handler", flush=True))
    cli.main()
"""


def test_a_live_thread_is_waited_for_then_handlers_run_and_no_teardown_follows():
    r = _python(LATE_THREAD, timeout=120)
    assert r.returncode == 0, r.stderr
    tail = [line for line in r.stdout.splitlines() if line in ("thread finished", "exit handler", "torn down")]
    # Before: a live non-daemon thread sent the CLI down the normal exit, teardown and all.
    assert tail == ["thread finished", "exit handler"], r.stdout[-500:]


def test_the_exit_status_survives_the_fast_exit():
    r = _python(LATE_THREAD, arg="--no-such-option", timeout=120)
    assert r.returncode == 2
    assert "thread finished" in r.stdout and "exit handler" in r.stdout
    assert "torn down" not in r.stdout


# A thread that holds the exit up until Ctrl-C: once the main thread has started waiting for it
# (a normal exit marks the main thread finished first), it sends the main thread SIGINT and sleeps on.
STUCK = """
    import atexit, signal, threading, time

    def stuck():
        while threading.main_thread().is_alive():
            time.sleep(0.01)
        # Once the main thread is blocked in its wait (a signal caught in the microseconds before it
        # blocks is seen only at its next bytecode, as in any Python lock wait; a person's Ctrl-C
        # does not land there) and to the main thread, as a terminal's Ctrl-C nearly always does: a
        # process-wide kill taken by this thread would never wake a main thread blocked in a wait.
        time.sleep(0.3)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(60)

    threading.Thread(target=stuck, name="stuck plugin worker").start()
    atexit.register(lambda: print("exit handler", flush=True))
    cli.main()
"""


def test_ctrl_c_while_a_thread_holds_the_exit_up_exits_130_without_a_traceback():
    r = _python(STUCK, timeout=50)
    assert r.returncode == 130, r.stderr[-800:]
    assert "Traceback" not in r.stderr, r.stderr[-800:]
    assert "interrupted while waiting" in r.stderr
    assert "exit handler" in r.stdout


def test_called_from_a_thread_other_than_main_it_ends_that_thread_with_systemexit():
    # An embedding program may run the CLI on a worker thread: waiting for every thread there would
    # wait for the caller itself.
    r = _python("""
        import threading
        codes = []

        def worker():
            try:
                cli.main()
            except SystemExit as done:
                codes.append(done.code)

        t = threading.Thread(target=worker, daemon=True)
        t.start()
        t.join(20)  # (a worker stuck waiting for itself is left behind: it is a daemon)
        print("worker exited with", codes, flush=True)
    """, timeout=60)
    assert r.returncode == 0, r.stderr[-800:]
    assert "worker exited with [0]" in r.stdout


def _store_with_a_run(tmp_path: Path) -> str:
    from synthledger.engine.ledger.events import RunStarted, to_payload
    from synthledger.store.eventstore import EventStore, NewEvent

    url = f"sqlite:///{tmp_path / 'store.db'}"
    start = RunStarted(config={"run": {"name": "r"}}, config_hash="h", plan_hash="p", version="test")
    EventStore(url).start_run("r", {"run": {"name": "r"}}, "h", [NewEvent(*to_payload(start))])
    return url


def test_output_that_cannot_be_written_is_one_line_and_a_closed_pipe_is_quiet(tmp_path):
    # `runs --json > /dev/full` ended in a traceback; so did `events RUN | head`.
    url = _store_with_a_run(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "runs", "--json", "--store", url], stdout=full,
                           stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "error: No space left on device", r.stderr
    events = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "events", "r", "--store", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    events.stdout.close()  # the reader is gone before the first line
    _, err = events.communicate(timeout=60)
    assert events.returncode == 1 and b"Traceback" not in err and err.strip() == b"", err


def test_a_ctrl_c_while_the_commands_load_exits_130_without_a_traceback(tmp_path):
    # QA: a SIGINT in the first second (the CLI still importing) printed a KeyboardInterrupt
    # traceback. A Ctrl-C is raised as KeyboardInterrupt wherever the main thread is: here 50 ms in,
    # well inside the imports.
    code = textwrap.dedent(f"""
        import runpy, signal, sys
        def ctrl_c(*_):
            raise KeyboardInterrupt
        signal.signal(signal.SIGALRM, ctrl_c)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        sys.argv = [{str(ROOT / 'cli.py')!r}, "runs", "--store", "sqlite:///{tmp_path / 'x.db'}"]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 130 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip() == "interrupted"
