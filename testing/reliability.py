"""Harness for reliability tests: a teacher server in its own process, the CLI in a forked child,
and the checks every crash-and-resume test makes.

A kill-at-every-commit loop runs the CLI dozens of times; a fresh interpreter per run would spend
most of the loop importing. A forked child of the (already importing) test process starts in
milliseconds and is still a separate process: `os._exit`, SIGKILL and a full disk end it and
nothing else. The server runs as its own process so no thread is ever forked mid-request.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["ServerProcess", "CliResult", "ForkedCli", "fork_cli", "run_events", "check_run_exact"]


class ServerProcess:
    """`python -m synthledger.testing.server` with the given flags; `.url`, `.stats()`, `.control()`."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "synthledger.testing.server", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"test server did not start: {line!r}")
        self.url = line.split()[-1]

    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._request("/stats")

    def settled_stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """The counts once no request is in flight: a client that exited with requests out (timed
        out, abandoned) closes their connections as it goes, and the server records each as
        `client_gone` only when it notices, a moment later."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while stats["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = self.stats()
        return stats

    def control(self, **changes: Any) -> dict[str, Any]:
        return self._request("/control", changes)

    def reset(self) -> None:
        self._request("/reset", {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """The one error line a failed command prints; asserts there is exactly one, no traceback, and
        nothing else on stderr but the notes a command starts with (which store, which run)."""
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        notes = [ln for ln in lines if ln.startswith(("store ", "resuming run "))]
        assert "Traceback" not in self.stderr and len(errors) == 1 and len(errors) + len(notes) == len(lines), (
            f"expected one error line, got:\n{self.stderr}")
        return errors[0]

    def last_line(self) -> list[str]:
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        return lines[-1].split() if lines else []


_WARM = False


def warm_imports() -> None:
    """Import, once in the parent, what every forked run would otherwise import again (seconds)."""
    global _WARM
    if _WARM:
        return
    import importlib

    for name in ("synthledger.cli", "synthledger.engine.run.runner", "synthledger.engine.ledger.audit",
                 "synthledger.engine.output.dataset", "synthledger.engine.output.export", "synthledger.engine.output.summary",
                 "synthledger.plugins.teachers.openai_compatible", "synthledger.plugins.teachers.openai_sdk",
                 "synthledger.plugins.strategies", "synthledger.plugins.verifiers", "synthledger.plugins.seeds",
                 "synthledger.plugins.tasks"):
        importlib.import_module(name)
    from synthledger.engine.host import get_host

    get_host()
    _WARM = True


class ForkedCli:
    """`synthledger ARGS` started in a forked child; `.pid`, `.wait()`."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
                 before: Callable[[], None] | None = None) -> None:
        """`before` runs in the child first (to set a resource limit, say)."""
        warm_imports()
        self.args = args
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        self._out, self._err = cwd / f".cli-{tag}.out", cwd / f".cli-{tag}.err"
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            _child(args, cwd, env or {}, self._out, self._err, before)  # never returns
        self.result: CliResult | None = None

    def poll(self) -> CliResult | None:
        if self.result is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self._finish(status)
        return self.result

    def wait(self, timeout: float = 120.0) -> CliResult:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                self._finish(os.waitpid(self.pid, 0)[1])
                raise TimeoutError(f"`synthledger {' '.join(self.args)}` ran over {timeout}s:\n{self.result}")
            time.sleep(0.01)
        assert self.result is not None
        return self.result

    def _finish(self, status: int) -> None:
        out, err = self._out.read_text(errors="replace"), self._err.read_text(errors="replace")
        self._out.unlink(missing_ok=True)
        self._err.unlink(missing_ok=True)
        self.result = CliResult(os.waitstatus_to_exitcode(status), out, err)


def _child(args: list[str], cwd: Path, env: dict[str, str], out_path: Path, err_path: Path,
           before: Callable[[], None] | None) -> None:
    code = 70
    try:
        os.chdir(cwd)
        os.environ.update(env)
        if "SYNTHLEDGER_STORE" not in env:
            os.environ.pop("SYNTHLEDGER_STORE", None)
        for fd, path in ((1, out_path), (2, err_path)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        if before is not None:
            before()
        from synthledger.cli import app

        try:
            app(args, prog_name="synthledger")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a child must never return into the test runner
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def fork_cli(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120.0,
             before: Callable[[], None] | None = None) -> CliResult:
    """Run `synthledger ARGS` in a forked child; its exit code (-N when killed by signal N) and output."""
    return ForkedCli(args, cwd=cwd, env=env, before=before).wait(timeout)


def run_events(db: Path, run_id: str | None = None) -> list[tuple[int, str, dict[str, Any], float]]:
    """(seq, type, payload, ts) of a run (the only run when `run_id` is None), read with sqlite3."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        if run_id is None:
            ids = [r[0] for r in con.execute("SELECT id FROM runs")]
            assert len(ids) == 1, f"expected one run, found {ids}"
            run_id = ids[0]
        rows = con.execute("SELECT seq, type, payload, ts FROM events WHERE run_id = ? ORDER BY seq", (run_id,))
        return [(s, t, json.loads(p), ts) for s, t, p, ts in rows]
    finally:
        con.close()


def check_run_exact(store_url: str, run_id: str, budget_queries: int) -> dict[str, Any]:
    """What every crash-and-resume test asserts of a finished run, returned for more checks:
    audit ok, spent == budget, one exported row per settled answer, no duplicate pair."""
    from synthledger.engine.ledger.audit import audit_run
    from synthledger.engine.output.dataset import accepted_rows
    from synthledger.store.eventstore import EventStore

    store = EventStore(store_url)
    try:
        report = audit_run(store, run_id)
        assert report.ok, [f"seq {v.seq}: {v.message}" for v in report.violations]
        assert report.spent["queries"] == budget_queries, report.spent
        purpose: dict[str, str] = {}
        settled: list[str] = []
        for ev in store.iter_events(run_id, types=["query_reserved", "query_settled"]):
            if ev.type == "query_reserved" and ev.payload.get("purpose"):
                purpose.setdefault(ev.payload["query_id"], ev.payload["purpose"])
            elif ev.type == "query_settled":
                settled.append(ev.payload["query_id"])
        assert len(settled) == len(set(settled)), "a query was settled twice"
        answers = {q for q in settled if purpose.get(q) == "answer"}
        rows = list(accepted_rows(store, run_id))
        pairs = Counter((r["question"], r["answer"]) for r in rows)
        assert not [p for p, n in pairs.items() if n > 1], "a (question, answer) pair was exported twice"
        ids = Counter(r["sample_id"] for r in rows)
        assert not [s for s, n in ids.items() if n > 1], "a sample was exported twice"
        row_answers = [q for r in rows for q in r["query_ids"] if purpose.get(q) == "answer"]
        assert sorted(row_answers) == sorted(answers), (
            f"{len(answers)} settled answers but {len(row_answers)} in exported rows "
            f"(missing {sorted(answers - set(row_answers))[:3]})")
        return {"report": report, "rows": rows, "settled": settled}
    finally:
        store.close()
