"""What the benchmark scripts share: the test teacher server as its own process, a run project on
disk, `generate` as a real subprocess (its own CPU time and peak RSS from wait4), store queries.

Importing this compiles the package's bytecode first, as installing it does: a machine that sets
PYTHONDONTWRITEBYTECODE (ours do) would otherwise compile ~100 modules from source in every
measured process, about 0.15 s of each start-up that a user pays once."""

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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLI = str(ROOT / "cli.py")
MAX_TOKENS = 16


def compile_bytecode() -> None:
    import compileall

    compileall.compile_dir(str(ROOT), maxlevels=0, quiet=1)
    for sub in ("engine", "store", "plugins", "commands", "testing"):
        compileall.compile_dir(str(ROOT / sub), quiet=1)


compile_bytecode()


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OPENAI_API_KEY="sk-bench", ANTHROPIC_API_KEY="sk-bench")
    out.pop("SYNTHLEDGER_STORE", None)
    return out


class Server:
    """The test server in its own process, at normal priority: a real provider does not get our
    scheduler's favours, and a server scheduled late is part of what pacing must survive."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "synthledger.testing.server", "--port", "0",
                                      "--log-size", "200000", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"test server did not start: {line!r}")
        self.url = line.split()[-1]

    def stats(self, log: bool = False) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats?log={int(log)}", timeout=60) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_run(d: Path, url: str, *, budget: int, concurrency: int | None, rpm: float | None = None, seeds: int = 500,
              name: str = "bench", strategy: str = "", teacher: str = "", provider: str = "openai-compatible",
              max_tokens: int = MAX_TOKENS, question: str = "What is {i} plus {m}?", api_path: str = "/v1",
              limits: str = "") -> Path:
    """A run project in `d`; `api_path` follows the server's URL in `base_url` (the Anthropic SDK adds its
    own `/v1`), `limits` is more of the `[limits]` section."""
    seed_file = d / f"seeds-{seeds}.jsonl"
    if not seed_file.exists():
        with seed_file.open("w") as fh:
            for i in range(seeds):
                fh.write(json.dumps({"id": f"s{i}", "question": question.format(i=i, m=i % 7),
                                     "answer": f"#### {i + i % 7}"}) + "\n")
    limits = ((f"max_concurrency = {concurrency}\n" if concurrency else "")
              + (f"requests_per_minute = {rpm}\n" if rpm else "") + limits)
    cfg = d / f"{name}.toml"
    cfg.write_text(f"""[run]
name = "{name}"
store = "sqlite:///{d / (name + '.db')}"

[seeds]
source = "jsonl"
path = "{seed_file}"

[teacher]
provider = "{provider}"
base_url = "{url}{api_path}"
model = "test-teacher"
max_tokens = {max_tokens}
timeout_s = 30
{teacher}
[limits]
{limits}
[budget]
queries = {budget}

[strategy]
name = "answer_augmentation"
{strategy}
""")
    return cfg


def start_generate(cfg: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CLI, "generate", "--config", str(cfg), "--no-progress", *args],
                            cwd=cfg.parent, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_generate(proc: subprocess.Popen, check: bool = True) -> dict[str, Any]:
    """Wait for the child, with its own CPU time and peak RSS (wait4 reports them for it alone)."""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    last = [ln for ln in out.splitlines() if ln.strip()]
    if check and proc.returncode != 0:
        raise RuntimeError(f"generate failed (rc {proc.returncode}): {err[-2000:]}")
    return {"rc": proc.returncode, "last_line": last[-1] if last else "", "cpu_s": ru.ru_utime + ru.ru_stime,
            "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "stderr_tail": err[-500:]}


def run_generate(cfg: Path, *args: str) -> dict[str, Any]:
    """`generate` to its exit: its wall time, and `spawned_at` on the clock the test server's log uses."""
    spawned_at, t0 = time.time(), time.monotonic()
    res = wait_generate(start_generate(cfg, *args))
    res["wall_s"] = round(time.monotonic() - t0, 3)
    res["spawned_at"] = spawned_at
    return res


def store_rows(db: Path, sql: str, *params: Any) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def count_events(db: Path, type_: str) -> int:
    try:
        (n,), = store_rows(db, "SELECT count(*) FROM events WHERE type = ?", type_)
    except sqlite3.OperationalError:
        return 0
    return n


def audit(cfg: Path, run_id: str) -> dict[str, Any]:
    store = f"sqlite:///{cfg.parent / (cfg.stem + '.db')}"
    res = subprocess.run([sys.executable, CLI, "audit", run_id, "--json", "--store", store], env=env(),
                         capture_output=True, text=True, timeout=600)
    return json.loads(res.stdout)


def run_id_of(line: str) -> str:
    words = line.split()
    if len(words) < 3 or words[0] != "run":
        raise RuntimeError(f"unexpected last line from generate: {line!r}")
    return words[1]
