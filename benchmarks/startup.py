"""Start-up: how long a command takes before it does anything, against what no Python engine can avoid.

    python benchmarks/startup.py [--repeat 7]

Every figure is the median wall time of `--repeat` fresh processes, measured in this run:
- baseline `python`: an interpreter that does nothing;
- baseline libraries: an interpreter that imports what the engine cannot run without (pydantic for
  config and events, sqlite3 for the default store; the teacher's HTTP client is our own, `http1`,
  and aiohttp, which it replaced, is no longer imported by a run);
- for reference, importing SQLAlchemy and pydantic: the baseline before a SQLite store file was
  opened without SQLAlchemy (store/lite.py), which other store URLs still load;
- `cli.py --help`;
- `generate`, a 10-query run against a zero-latency test server, start to exit;
- `generate`, spawn to the first request the server receives: what a paced run loses before its
  first slot, and why rates are also reported over the whole process (benchmarks/throughput.py).

Ratios are against the libraries baseline. Saved to benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import CLI, HERE, Server, env, write_run  # noqa: E402

LIBRARIES = "import sqlite3, pydantic"
WITH_SQLALCHEMY = "import sqlalchemy, pydantic"


def wall(cmd: list[str], cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def generate_runs(repeat: int) -> tuple[list[float], list[float]]:
    """(whole runs, spawn to first request) for `repeat` fresh 10-query runs."""
    whole, first = [], []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, Server() as server:
        for i in range(repeat):
            cfg = write_run(Path(tmp), server.url, budget=10, concurrency=8, seeds=10, name=f"s{i}")
            before = server.stats(log=True)["log"]
            spawned = time.time()
            whole.append(wall([sys.executable, CLI, "generate", "--config", str(cfg), "--no-progress"], cfg.parent))
            log = server.stats(log=True)["log"][len(before):]
            first.append(min(e["t"] for e in log) - spawned)  # the server's receipt (zero latency)
    return whole, first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results" / "startup.json"))
    args = ap.parse_args(argv)
    n = args.repeat
    med = statistics.median
    python = med(wall([sys.executable, "-c", "pass"]) for _ in range(n))
    libraries = med(wall([sys.executable, "-c", LIBRARIES]) for _ in range(n))
    with_sqlalchemy = med(wall([sys.executable, "-c", WITH_SQLALCHEMY]) for _ in range(n))
    help_s = med(wall([sys.executable, CLI, "--help"]) for _ in range(n))
    whole, first = generate_runs(n)
    figures = {
        "python_s": round(python, 3), "libraries_s": round(libraries, 3),
        "libraries_with_sqlalchemy_s": round(with_sqlalchemy, 3), "cli_help_s": round(help_s, 3),
        "generate_10_queries_s": round(med(whole), 3), "generate_to_first_request_s": round(med(first), 3),
    }
    ratios = {k.removesuffix("_s") + "_vs_libraries": round(v / libraries, 2)
              for k, v in figures.items() if k not in ("python_s", "libraries_s")}
    doc = {"figures": figures, "ratios": ratios, "repeat": n, "baseline": LIBRARIES,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                       "load_avg_at_end": os.getloadavg()}}
    print(json.dumps(doc, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
