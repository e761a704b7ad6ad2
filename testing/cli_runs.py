"""Whole `generate` runs for tests: a run project on disk, the test server and the real CLI, each
as its own process, and the witnesses (server counts, `audit --json`, the event log) to compare."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / "cli.py")


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OPENAI_API_KEY="sk-test", ANTHROPIC_API_KEY="sk-test")
    out.pop("SYNTHLEDGER_STORE", None)
    return out


class Server:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "synthledger.testing.server", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.startswith("listening on "), f"server did not start: {line!r}"
        self.url = line.split()[-1]

    def stats(self, log: bool = False) -> dict[str, Any]:
        """The server's counts; with `log`, every request's (time, outcome) as well."""
        with urllib.request.urlopen(f"{self.url}/stats?log={int(log)}", timeout=10) as r:
            return json.loads(r.read())

    def control(self, **changes: Any) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.url}/control", data=json.dumps(changes).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):  # an inline table
        return "{" + ", ".join(f"{json.dumps(k)} = {toml(x)}" for k, x in v.items()) + "}"
    return repr(v)


class Project:
    def __init__(self, d: Path, url: str, seeds: int = 20) -> None:
        self.dir, self.url = d, url
        self.store = f"sqlite:///{d / 'store.db'}"
        with (d / "seeds.jsonl").open("w") as fh:
            for i in range(seeds):
                fh.write(json.dumps({"id": f"s{i}", "question": f"Ann has {i} pens and buys 2 more. How many?",
                                     "answer": f"#### {i + 2}"}) + "\n")

    def write(self, **sections: dict[str, Any]) -> Path:
        base: dict[str, dict[str, Any]] = {
            "run": {"name": "t", "store": self.store},
            "seeds": {"source": "jsonl", "path": str(self.dir / "seeds.jsonl")},
            # max_tokens leaves room for the server's longest reply (33 words): cut-off answers are rejected.
            "teacher": {"provider": "openai-compatible", "base_url": self.url + "/v1", "model": "test-teacher",
                        "max_tokens": 64, "timeout_s": 10.0},
            "limits": {"backoff_base_s": 0.05, "backoff_max_s": 0.5},
            "budget": {"queries": 20},
            "strategy": {"name": "answer_augmentation"},
        }
        for k, v in sections.items():
            base[k] = {**base.get(k, {}), **v}
        path = self.dir / "run.toml"
        path.write_text("".join(f"[{k}]\n" + "".join(f"{kk} = {toml(vv)}\n" for kk, vv in v.items() if vv is not None)
                                + "\n" for k, v in base.items()))
        return path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, CLI, *args], cwd=self.dir, env=env(), capture_output=True, text=True,
                              timeout=timeout)

    def generate(self, config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.cli("generate", "--config", str(config), "--no-progress", *args, timeout=timeout)

    def popen(self, config: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, CLI, "generate", "--config", str(config), "--no-progress", *args],
                                cwd=self.dir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run_to(self, config: Path, status: str = "completed") -> tuple[str, dict[str, Any]]:
        """`generate` from `config`, which must exit 0 ending in `status`: (run id, its audit)."""
        res = self.generate(config)
        assert res.returncode == 0, res.stderr
        run_id, got = last_line(res)
        assert got == status, res.stderr
        return run_id, self.audit(run_id)

    def audit(self, run_id: str) -> dict[str, Any]:
        res = self.cli("audit", run_id, "--json", "--store", self.store)
        report = json.loads(res.stdout)
        assert res.returncode == 0 and report["ok"], f"audit failed: {report.get('violations')}\n{res.stderr}"
        return report

    def events(self, *types: str) -> list[dict[str, Any]]:
        db = self.dir / "store.db"
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            marks = ",".join("?" * len(types))
            rows = con.execute(f"SELECT type, payload FROM events WHERE type IN ({marks}) ORDER BY seq",
                               types).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()
        return [{"type": t, **json.loads(p)} for t, p in rows]


def last_line(res: subprocess.CompletedProcess) -> tuple[str, str]:
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines, f"no stdout (rc {res.returncode}); stderr:\n{res.stderr}"
    words = lines[-1].split()
    assert words[0] == "run" and len(words) >= 3, lines[-1]
    return words[1], words[2]


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
