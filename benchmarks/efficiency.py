"""Teacher efficiency scenarios of benchmarks/throughput.py (also runnable alone):

(e) `n`: answer augmentation with k = 8 samples per seed, run twice in the same session against
    the same server - as one `n=8` request per seed, then as one request per sample - and the
    input tokens each run paid (from `audit`) compared: target <= 1/8 + 5% of the second.
    The same again in OpenAI's batch mode (`e_batch`), where the 8 samples are one line of the batch.
(f) batch mode: 2,000 queries as one OpenAI batch; the run is SIGKILLed while it polls, then
    resumed: the server saw exactly one batch, every query settled once, and `audit` is exact.

    python benchmarks/efficiency.py [--only e,f]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (Server, audit, count_events, run_generate, run_id_of, start_generate,  # noqa: E402
                      wait_generate, write_run)

N8_TARGET = 1 / 8 + 0.05
QUESTION = ("A baker makes {i} trays of rolls with 12 rolls on each tray, sells 7 rolls in the morning and "
            "gives {m} rolls to a neighbour. How many rolls are left at the end of the day? Think it through.")


BATCH = "batch = true\nbatch_size = 5000\nbatch_wait_s = 0.5\nbatch_poll_s = 0.2\n"


def n_samples(seeds: int = 100, k: int = 8, batch: bool = False) -> dict[str, Any]:
    """Online (openai-compatible), or in OpenAI's batch mode, where the k samples are one `n=k` line."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-e-") as tmp, Server("--latency-ms", "50") as server:
        for name, per_request in (("n8", k), ("one_per_sample", 1)):
            before = server.stats()
            cfg = write_run(Path(tmp), server.url, budget=seeds * k, concurrency=64, seeds=seeds, name=name,
                            question=QUESTION, provider="openai" if batch else "openai-compatible",
                            teacher=BATCH if batch else "",
                            strategy=f"samples_per_seed = {k}\nsamples_per_request = {per_request}\n")
            res = run_generate(cfg)
            report = audit(cfg, run_id_of(res["last_line"]))
            after = server.stats()
            sent = "batch_requests" if batch else "answered"
            runs[name] = {"queries": report["spent"]["queries"], "input_tokens": report["spent"]["input_tokens"],
                          "output_tokens": report["spent"]["output_tokens"],
                          "requests": after[sent] - before[sent], "wall_s": res["wall_s"],
                          "audit_ok": report["ok"], "shared_requests": report["shared_requests"]}
    share = runs["n8"]["input_tokens"] / runs["one_per_sample"]["input_tokens"]
    out = {"k": k, "seeds": seeds, "batch": batch, "runs": runs, "input_share": round(share, 4),
           "target": round(N8_TARGET, 4)}
    out["met"] = (share <= N8_TARGET and all(r["audit_ok"] and r["queries"] == seeds * k for r in runs.values()))
    return out


def batch_kill_resume(n: int = 2000) -> dict[str, Any]:
    # 2,000 requests at 4 ms each: the batch is in progress for ~8 s, long enough to kill mid-poll.
    with tempfile.TemporaryDirectory(prefix="bench-f-") as tmp, Server("--batch-request-s", "0.004") as server:
        d = Path(tmp)
        cfg = write_run(d, server.url, budget=n, concurrency=64, seeds=n, name="f", provider="openai",
                        teacher="batch = true\nbatch_size = 5000\nbatch_wait_s = 1.0\nbatch_poll_s = 0.5\n",
                        strategy="samples_per_seed = 1\n")
        db = d / "f.db"
        t0 = time.monotonic()
        proc = start_generate(cfg)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and count_events(db, "batch_submitted") < 1:
            time.sleep(0.05)
        time.sleep(1.0)  # polling now
        settled_at_kill = count_events(db, "query_settled")
        proc.send_signal(signal.SIGKILL)
        wait_generate(proc, check=False)
        res = run_generate(cfg, "--resume")
        wall = time.monotonic() - t0
        report = audit(cfg, run_id_of(res["last_line"]))
        stats = server.stats()
        submitted = count_events(db, "batch_submitted")
    out = {"requests": n, "settled_at_kill": settled_at_kill, "server_batches": stats["batches"],
           "batch_submitted_events": submitted, "server_batch_requests": stats["batch_requests"],
           "settled": report["counts"]["settled"], "spent": report["spent"], "lost": report["counts"]["lost"],
           "audit_ok": report["ok"], "status": res["last_line"].split()[2], "wall_s_both_sessions": round(wall, 2)}
    out["met"] = (settled_at_kill == 0 and stats["batches"] == 1 == submitted and report["ok"]
                  and out["settled"] == n == stats["batch_requests"] and report["spent"]["queries"] == n)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="e,f")
    args = ap.parse_args(argv)
    ok = True
    if "e" in args.only:
        for batch in (False, True):
            r = n_samples(batch=batch)
            print("e_batch" if batch else "e", json.dumps(r), flush=True)
            ok &= r["met"]
    if "f" in args.only:
        r = batch_kill_resume()
        print("f", json.dumps(r), flush=True)
        ok &= r["met"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
