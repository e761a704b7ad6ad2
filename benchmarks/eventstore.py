"""Event store throughput: durable batched appends, full-stream replay, and replay memory, on SQLite
and on PostgreSQL, measured in the same run.

    python benchmarks/eventstore.py [--events 1000000] [--batch 500] [--pg-url URL | --no-postgres]

Appends go through `EventStore.append` exactly as the recorder's group commits do (one transaction
and one fsync per batch, hash chain included), with payloads shaped like a real run's events. The
replay streams the run back through `iter_events` into the budget ledger in a child process, so its
peak RSS is the replay's own. A raw `sqlite3.executemany` of the very same rows, with the same
pragmas and batch size, is the SQLite baseline: how close the store gets to what SQLite itself can do.
Then 4 writer processes append to 4 runs of one store at once (the many-writers case a team store
serves), events/4 each: the aggregate appends/s from the first writer's start to the last's end.

PostgreSQL is a throwaway durable server (fsync and synchronous_commit on, unix socket) that the
benchmark starts itself (testing/postgres.py), unless --pg-url names one. The top-level figures are
SQLite's (as before); `postgresql` holds the same figures for PostgreSQL.
Results are printed and saved to benchmarks/results/eventstore.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
TARGETS = {"appends_per_s": 20_000, "replayed_per_s": 100_000, "replay_peak_rss_mb": 300}

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May? ")
ANSWER = ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n"
          "Let's double-check: 48 in April plus 24 in May is 72 clips in total, so the answer stands.\n#### 72")


def _lifecycle(i: int) -> list[tuple[str, dict[str, Any]]]:
    """One plan item as a run records it: reserve, dispatch, settle, propose, accept, done."""
    qid = f"q{i:019x}"
    item = f"aa:seed-{i % 7473}:{i // 7473}"
    question = f"{QUESTION}(variant {i})"
    cost = {"queries": 1, "input_tokens": 61 + i % 40, "output_tokens": 40 + i % 90, "usd": 0.0000312}
    return [
        ("query_reserved", {
            "query_id": qid, "attempt": 1, "key": f"{i:064x}", "role": "teacher", "purpose": "answer",
            "strategy": "answer_augmentation", "item": item, "provider": "openai-compatible",
            "model": "gpt-4o-mini", "worst": {"queries": 1, "input_tokens": 160, "output_tokens": 256, "usd": 0.0002},
            "messages": [{"role": "system", "content": "Solve the problem. End with '#### <answer>'."},
                         {"role": "user", "content": question}],
            "params": {"max_tokens": 256, "temperature": 0.7, "n": 1},
        }),
        ("query_dispatched", {"query_id": qid, "attempt": 1}),
        ("query_settled", {"query_id": qid, "attempt": 1, "actual": cost, "text": ANSWER,
                           "finish_reason": "stop", "latency_s": 0.8123}),
        ("sample_proposed", {
            "sample_id": f"s-{item}", "item": item, "strategy": "answer_augmentation", "seed_id": f"seed-{i % 7473}",
            "question": question, "answer": ANSWER, "reference": "72", "query_ids": [qid],
            "roles": {qid: "teacher"}, "models": {"teacher": "gpt-4o-mini"},
            "meta": {"final": "72", "sample_index": i // 7473},
        }),
        ("sample_accepted", {"sample_id": f"s-{item}", "reason": "final answer matches", "details": {},
                             "query_ids": []}),
        ("item_done", {"item": item, "strategy": "answer_augmentation", "outcome": "accepted"}),
    ]


def realistic_events(n: int) -> Iterator[tuple[str, dict[str, Any]]]:
    yield ("run_started", {
        "config": {"run": {"name": "bench"}}, "config_hash": "0" * 16, "plan_hash": "1" * 16, "version": "bench",
        "kind": "generate",
        "budget": {"total": {"queries": n, "input_tokens": None, "output_tokens": None, "usd": None},
                   "roles": {}, "strategies": {}, "counted_roles": None},
    })
    i, emitted = 0, 1
    while emitted < n:
        for ev in _lifecycle(i):
            if emitted >= n:
                return
            yield ev
            emitted += 1
        i += 1


def bench_appends(url: str, n: int, batch: int) -> dict[str, Any]:
    from synthledger.store.eventstore import EventStore, NewEvent
    from synthledger.store.hashing import GENESIS

    store = EventStore(url)
    run_id = store.create_run("bench", {"bench": True}, "0" * 16)
    seq, head, busy, batches = 0, GENESIS, 0.0, 0
    pending: list[NewEvent] = []

    def commit() -> None:
        nonlocal seq, head, busy, batches
        t0 = time.perf_counter()
        seq, head = store.append(run_id, pending, seq, head)
        busy += time.perf_counter() - t0
        batches += 1
        pending.clear()

    for type_, payload in realistic_events(n):
        pending.append(NewEvent(type_, payload))
        if len(pending) == batch:
            commit()
    if pending:
        commit()
    store.close()
    return {"run_id": run_id, "events": seq, "batches": batches, "seconds": round(busy, 3),
            "appends_per_s": round(seq / busy)}


SCHEMA = """
CREATE TABLE events (run_id VARCHAR NOT NULL, seq INTEGER NOT NULL, type VARCHAR NOT NULL,
  schema_version INTEGER NOT NULL, payload VARCHAR NOT NULL, ts FLOAT NOT NULL, hash VARCHAR NOT NULL,
  PRIMARY KEY (run_id, seq));
CREATE INDEX ix_events_type ON events (run_id, type);
"""


def bench_raw_sqlite(src: str, dst: str, run_id: str, batch: int) -> dict[str, Any]:
    """The same rows, already encoded and hashed, written by bare sqlite3 with the same durability."""
    read = sqlite3.connect(src)
    write = sqlite3.connect(dst, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL"):
        write.execute(f"PRAGMA {pragma}")
    write.executescript(SCHEMA)
    cur = read.execute("SELECT run_id, seq, type, schema_version, payload, ts, hash FROM events "
                       "WHERE run_id = ? ORDER BY seq", (run_id,))
    busy, n = 0.0, 0
    while True:
        rows = cur.fetchmany(batch)
        if not rows:
            break
        t0 = time.perf_counter()
        write.execute("BEGIN")
        write.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        write.execute("COMMIT")
        busy += time.perf_counter() - t0
        n += len(rows)
    read.close()
    write.close()
    return {"events": n, "seconds": round(busy, 3), "appends_per_s": round(n / busy)}


def replay_child(url: str, run_id: str) -> None:
    """Runs in a fresh interpreter: stream the run into the ledger, report rate and peak RSS."""
    from synthledger.engine.ledger.ledger import BudgetSpec, Ledger, budget_from_dict
    from synthledger.store.eventstore import EventStore

    store = EventStore(url)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    ledger = Ledger(BudgetSpec())
    n = 0
    for ev in store.iter_events(run_id):
        if ev.type == "run_started":
            ledger.spec = budget_from_dict(ev.payload.get("budget"))
        ledger.apply_event(ev)
        n += 1
    seconds = time.perf_counter() - t0
    snap = ledger.snapshot()
    print(json.dumps({"events": n, "seconds": round(seconds, 3), "replayed_per_s": round(n / seconds),
                      "rss_after_imports_mb": round(rss_before, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "settled": snap["counts"]["settled"], "spent_queries": snap["spent"]["queries"],
                      "violations": len(ledger.violations)}))


def audit_child(url: str, run_id: str) -> None:
    """The full `audit` (hash chain + payload validation + ledger) for comparison; not a target."""
    from synthledger.engine.ledger.audit import audit_run
    from synthledger.store.eventstore import EventStore

    store = EventStore(url)
    t0 = time.perf_counter()
    report = audit_run(store, run_id)
    seconds = time.perf_counter() - t0
    print(json.dumps({"events": report.events, "ok": report.ok, "seconds": round(seconds, 3),
                      "audited_per_s": round(report.events / seconds),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def writer_child(url: str, n: int, batch: int, start_at: float) -> None:
    """One of the concurrent writers: its own run, created before the common start time."""
    from synthledger.store.eventstore import EventStore, NewEvent
    from synthledger.store.hashing import GENESIS

    store = EventStore(url)
    run_id = store.create_run("bench-writer", {"bench": True}, "0" * 16)
    # Built before the start and reused in turn, so the span measures the store, not payload building.
    events = [NewEvent(t, p) for t, p in realistic_events(min(n, 20 * batch))]
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    seq, head, i = 0, GENESIS, 0
    while seq < n:
        chunk = events[i:i + min(batch, n - seq)]
        seq, head = store.append(run_id, chunk, seq, head)
        i = (i + len(chunk)) % len(events)
    t1 = time.time()
    store.close()
    print(json.dumps({"run_id": run_id, "events": seq, "start": t0, "end": t1}))


def bench_concurrent(url: str, n: int, batch: int, writers: int = 4) -> dict[str, Any]:
    """`writers` processes on `writers` runs at once; events/s over the whole span."""
    from synthledger.store.eventstore import EventStore

    EventStore(url).close()  # migrate once, outside the measurement
    each = n // writers
    start_at = time.time() + 3.0 + 0.5 * writers  # time for every child to import, connect, build its events
    procs = [subprocess.Popen([sys.executable, __file__, "--writer-child", url, str(each), str(batch), repr(start_at)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(writers)]
    outs = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"writer failed: {err.strip()[-2000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    total = sum(o["events"] for o in outs)
    late = max(o["start"] for o in outs) - min(o["start"] for o in outs)
    return {"writers": writers, "events": total, "seconds": round(span, 3), "appends_per_s": round(total / span),
            "start_spread_s": round(late, 3)}


def _child(mode: str, url: str, run_id: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, f"--{mode}-child", url, run_id], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(url: str, args: argparse.Namespace, label: str) -> dict[str, Any]:
    """Appends, replay (and audit) of one `--events` run, then the concurrent writers, on one store."""
    print(f"[{label}] appending {args.events:,} events in batches of {args.batch} ...", flush=True)
    appends = bench_appends(url, args.events, args.batch)
    print(f"[{label}]   {appends['appends_per_s']:,} appends/s", flush=True)
    replay = _child("replay", url, appends["run_id"])
    print(f"[{label}]   replay: {replay['replayed_per_s']:,} events/s, peak RSS {replay['peak_rss_mb']} MB", flush=True)
    audit = None if args.no_audit else _child("audit", url, appends["run_id"])
    if audit:
        print(f"[{label}]   full audit: {audit['audited_per_s']:,} events/s (ok={audit['ok']})", flush=True)
    concurrent = bench_concurrent(url, args.events, args.batch, args.writers)
    print(f"[{label}]   {args.writers} writers on {args.writers} runs: {concurrent['appends_per_s']:,} appends/s "
          "in all", flush=True)
    measured = {"appends_per_s": appends["appends_per_s"], "replayed_per_s": replay["replayed_per_s"],
                "replay_peak_rss_mb": replay["peak_rss_mb"]}
    return {"measured": measured, "ratio_vs_target": _vs_target(measured),
            "concurrent_appends_per_s": concurrent["appends_per_s"],
            "details": {"appends": appends, "replay": replay, "audit": audit, "concurrent": concurrent}}


def _vs_target(measured: dict[str, Any]) -> dict[str, float]:
    return {
        "appends_per_s": round(measured["appends_per_s"] / TARGETS["appends_per_s"], 2),
        "replayed_per_s": round(measured["replayed_per_s"] / TARGETS["replayed_per_s"], 2),
        # For memory, >= 1 also means "within target": the target divided by what was used.
        "replay_peak_rss_mb": round(TARGETS["replay_peak_rss_mb"] / measured["replay_peak_rss_mb"], 2),
    }


def measure_postgres(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.no_postgres:
        return None
    if args.pg_url:
        return {"server": "given", **measure(args.pg_url, args, "postgresql")}
    from synthledger.testing.postgres import PgCluster

    with PgCluster(durable=True, root=args.dir) as cluster:
        url = cluster.create_database("bench")
        version = cluster.psql("SHOW server_version").strip()
        return {"server": f"throwaway durable PostgreSQL {version} (fsync on, unix socket)",
                **measure(url, args, "postgresql")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=500, help="events per transaction (the recorder's group commit)")
    ap.add_argument("--writers", type=int, default=4, help="concurrent writer processes, one run each")
    ap.add_argument("--dir", help="where the databases go (default: a temporary directory, removed after)")
    ap.add_argument("--no-audit", action="store_true", help="skip the full-audit measurement")
    ap.add_argument("--pg-url", help="measure this PostgreSQL database instead of starting a throwaway server")
    ap.add_argument("--no-postgres", action="store_true", help="SQLite only")
    ap.add_argument("--out", default=str(HERE / "results" / "eventstore.json"))
    ap.add_argument("--replay-child", nargs=2, metavar=("URL", "RUN"), help=argparse.SUPPRESS)
    ap.add_argument("--audit-child", nargs=2, metavar=("URL", "RUN"), help=argparse.SUPPRESS)
    ap.add_argument("--writer-child", nargs=4, metavar=("URL", "N", "BATCH", "START"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.replay_child:
        replay_child(*args.replay_child)
        return 0
    if args.audit_child:
        audit_child(*args.audit_child)
        return 0
    if args.writer_child:
        url, n, batch, start = args.writer_child
        writer_child(url, int(n), int(batch), float(start))
        return 0

    load_before = os.getloadavg()  # the figures mean little on a machine others keep busy: say so
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = Path(tmp) / "store.db"
        lite = measure(f"sqlite:///{db}", args, "sqlite")
        baseline = bench_raw_sqlite(str(db), str(Path(tmp) / "raw.db"), lite["details"]["appends"]["run_id"],
                                    args.batch)
        print(f"[sqlite]   raw sqlite3 baseline: {baseline['appends_per_s']:,} rows/s", flush=True)
        db_mb = round(db.stat().st_size / 2**20, 1)
    pg = measure_postgres(args)

    result = {
        "events": args.events, "batch": args.batch, "db_mb": db_mb,
        "measured": lite["measured"], "targets": TARGETS, "ratio_vs_target": lite["ratio_vs_target"],
        "concurrent_appends_per_s": lite["concurrent_appends_per_s"],
        "baseline_raw_sqlite_rows_per_s": baseline["appends_per_s"],
        "appends_vs_raw_sqlite": round(lite["measured"]["appends_per_s"] / baseline["appends_per_s"], 3),
        "details": {**lite["details"], "raw_sqlite": baseline},
        "postgresql": pg,
        "machine": {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                    "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
    }
    checked = [lite["ratio_vs_target"]] + ([pg["ratio_vs_target"]] if pg else [])
    result["targets_met"] = all(v >= 1 for ratios in checked for v in ratios.values())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = {"sqlite": {**lite["measured"], "concurrent_appends_per_s": lite["concurrent_appends_per_s"]}}
    if pg:
        table["postgresql"] = {**pg["measured"], "concurrent_appends_per_s": pg["concurrent_appends_per_s"]}
    print(json.dumps({"measured": table, "targets": TARGETS, "targets_met": result["targets_met"],
                      "baseline_raw_sqlite_rows_per_s": baseline["appends_per_s"],
                      "appends_vs_raw_sqlite": result["appends_vs_raw_sqlite"]}, indent=2))
    print(f"saved {out}")
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
