"""The live view and the final summary line under a usd budget: the binding limit in its own unit
(not `0/0`), spent and projected dollars, accepted and rejected samples, rate and ETA."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from synthledger.engine.ledger.ledger import Amount, BudgetSpec, Ledger, Limits
from synthledger.engine.run.progress import RunProgress, binding_scope
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def ledger_with(spent: Amount, limits: Limits) -> Ledger:
    led = Ledger(BudgetSpec(total=limits))
    led.spent["total"] = spent
    led.counts["settled"] = spent.queries
    return led


def test_usd_is_the_binding_limit_and_reads_in_dollars():
    led = ledger_with(Amount(10, 1000, 500, 0.125), Limits(queries=1000, usd=0.5))
    assert binding_scope(led) == ("", "usd", 0.125, 0.5)
    view = RunProgress(led, "r", enabled=False)
    for _ in range(3):
        view.on_event(0, "sample_accepted", {"details": {}})
    view.on_event(0, "sample_accepted", {"details": {"unchecked": "no reference"}})
    view.on_event(0, "sample_rejected", {})
    line = view.stats_line()
    assert "usd $0.1250 of $0.5000 (25.0%), projected $0.5000" in line
    assert "accepted 4 (1 unchecked), rejected 1" in line  # (after the rejected count, it read as theirs)
    assert "0/0" not in line and "ETA" in line
    view._window[0] = (view._window[0][0] - 5, 0, 0.0, 0)  # five seconds on: the rates are shown
    assert "req/s" in view.stats_line()


def test_projection_under_a_query_limit_and_the_eta():
    led = ledger_with(Amount(25, 1000, 500, 0.01), Limits(queries=100))
    view = RunProgress(led, "r", enabled=False)
    first = view.stats_line()
    assert "queries 25 of 100 (25.0%), projected $0.0400" in first  # $0.01 per 25 queries, 100 queries
    view._window[0] = (view._window[0][0] - 10, 15, 0.15, 0)  # ten seconds ago: 15% of the limit
    led.spent["total"] = Amount(25, 1000, 500, 0.01)
    line = view.stats_line()
    assert "ETA 1m15s" in line  # 10 points in 10 s, 75 points to go


def test_a_budget_of_zero_queries_is_shown_as_one_not_as_no_limit():
    # (An experiment's seeds-only cell is such a run: it asks nothing.) The live view said "(no limit)".
    line = RunProgress(ledger_with(Amount(), Limits(queries=0)), "r", enabled=False).stats_line()
    assert "queries 0 of 0" in line and "no limit" not in line, line


def test_summary_line_has_the_same_figures():
    led = ledger_with(Amount(40, 4000, 2000, 0.499), Limits(usd=0.5))
    view = RunProgress(led, "gsm", enabled=False, accepted=30, rejected=2)
    view._t0 -= 10  # (a run of ten seconds: under one there is no rate to show)
    line = view.summary("budget_exhausted")
    assert line.startswith("gsm: budget_exhausted after ")
    assert "usd $0.4990 of $0.5000 (99.8%)" in line and "accepted 30, rejected 2" in line
    assert "40 queries, tok 4000/2000" in line and "req/s" in line
    one = RunProgress(ledger_with(Amount(1, 10, 5, 0.0), Limits(queries=1)), "one", enabled=False)
    assert "| 1 query, tok 10/5" in one.summary("budget_exhausted")  # it said "1 queries"


def test_generate_under_a_usd_budget_shows_dollars_samples_and_a_summary(tmp_path):
    with run_in_thread() as srv:
        cfg = write_project(tmp_path, srv.url, name="dollars", seeds=3, queries=1,
                            extra='\n[pricing."test-teacher"]\ninput_per_mtok = 100.0\noutput_per_mtok = 400.0\n')
        cfg.write_text(cfg.read_text().replace("queries = 1\n", "usd = 0.1\n"))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"}
        env.pop("SYNTHLEDGER_STORE", None)
        r = subprocess.run([sys.executable, CLI, "generate", "-c", "run.toml", "--store",
                            f"sqlite:///{tmp_path / 's.db'}"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    live = [ln for ln in lines if ln.startswith("[")]
    assert live and all("usd $" in ln and "of $0.1000" in ln and "accepted" in ln for ln in live)
    summary = [ln for ln in lines if ln.startswith("dollars: budget_exhausted after")]
    assert len(summary) == 1 and "of $0.1000" in summary[0] and "rejected 0" in summary[0]


def test_a_pause_leaves_the_live_view_when_it_ends_and_a_resume_does_not_show_an_old_one():
    # The ledger keeps each model's last pacing note, and the view showed it while it was the last:
    # "pace: paused 5s: 429 while ..." stayed on the line for minutes after the pause ended, and a
    # resumed run showed the previous process's pause as if it were happening now.
    import time

    led = Ledger(BudgetSpec(total=Limits(queries=10)))
    led.apply(1, "rate_adjusted", {"model": "m", "note": "paused 0.3s: 429 while sending at 5% of the paced rate",
                                   "factor": 1.0, "pause_s": 0.3})
    resumed = RunProgress(led, "r", enabled=False)  # that pause was recorded before this session
    assert "pace:" not in resumed.stats_line()
    view = RunProgress(led, "r", enabled=False)
    payload = {"model": "m", "note": "paused 0.3s: 429 while sending at 5% of the paced rate", "factor": 0.98,
               "pause_s": 0.3}
    led.apply(2, "rate_adjusted", payload)
    view.on_event(2, "rate_adjusted", payload)
    assert "pace: paused 0.3s: 429 while sending at 5% of the paced rate" in view.stats_line()
    time.sleep(0.35)
    line = view.stats_line()
    assert "paused" not in line and "pace: pacing at 98% of the limit" in line  # the slower pace stays


def _live_generate(tmp_path: Path, srv_url: str, limits: str, name: str) -> tuple[subprocess.Popen, str]:
    cfg = write_project(tmp_path, srv_url, name=name, seeds=3, queries=6, extra=f"\n[limits]\n{limits}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}
    env.pop("SYNTHLEDGER_STORE", None)
    store = f"sqlite:///{tmp_path / 's.db'}"
    proc = subprocess.Popen([sys.executable, CLI, "generate", "-c", str(cfg), "--store", store],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    return proc, store


def _audit(tmp_path: Path, store: str, out: str) -> dict:
    import json

    run_id = out.strip().splitlines()[-1].split()[1]  # "run <id> <status> (...)"
    r = subprocess.run([sys.executable, CLI, "audit", run_id, "--json", "--store", store], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(r.stdout)


def test_the_breakers_pauses_are_recorded_and_counted_down_in_the_live_view_until_the_teacher_answers(tmp_path):
    # A teacher that answers every request with a 5xx opens the circuit breaker, and nothing went out
    # for minutes with the live view saying only "in flight 0 | last error 45s ago": no word of a
    # pause, or of when the next try goes out, and no event recorded it.
    with run_in_thread(error_rate=1.0) as srv:
        proc, store = _live_generate(tmp_path, srv.url, "breaker_threshold = 2\nbreaker_cooldown_s = 1.0\n",
                                     "down")
        seen: list[str] = []
        try:
            for line in proc.stderr:  # the log-line view, one line every 5 s
                seen.append(line)
                if "pace: teacher paused" in line:
                    break
            srv.control(error_rate=0.0)  # the teacher comes back
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, "".join(seen) + err
    paused = [ln for ln in seen if "pace: teacher paused" in ln]
    assert paused, "".join(seen)
    assert re.search(r"pace: teacher paused \d+s: (2 failures in a row|its test request failed too) "
                     r"\(server_error\); pause \d of at most 5; next try in \d+s \|", paused[0]), paused[0]
    notes = _audit(tmp_path, store, out)["pacing"]
    assert notes["pauses"] >= 1
    assert notes["notes"][0].startswith("teacher paused 1s: 2 failures in a row (server_error); pause 1 of at most 5")
    assert any(n.startswith("teacher answers again after ") and "sending resumed" in n for n in notes["notes"])


def test_a_breaker_that_never_closes_records_that_the_run_stops(tmp_path):
    with run_in_thread(error_rate=1.0) as srv:
        proc, store = _live_generate(tmp_path, srv.url, "breaker_threshold = 2\nbreaker_cooldown_s = 0.05\n",
                                     "gone")
        out, err = proc.communicate(timeout=120)
    # It said "after 6 pauses" beside the 5 recorded (the last opening stops the run, pausing nothing).
    assert proc.returncode == 1 and "did not recover after 5 pauses" in err, err
    notes = _audit(tmp_path, store, out)["pacing"]
    assert notes["pauses"] == 5, notes
    assert notes["notes"][-1] == "teacher still failing (server_error) after 5 pauses: the run stops", notes
    # Every query the run reserved ends: answered, or abandoned when the run stopped (QA: the ones
    # waiting for the breaker or a retry were left open for good in a finished, failed run).
    import json
    import sqlite3

    rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT type, payload FROM events").fetchall()
    of = {t: {json.loads(p)["query_id"] for tt, p in rows if tt == t}
          for t in ("query_reserved", "query_settled", "query_abandoned")}
    assert of["query_reserved"] and of["query_reserved"] == of["query_settled"] | of["query_abandoned"], of


def test_sigusr1_prints_where_every_thread_is_and_the_run_goes_on(tmp_path):
    # A command that seems stuck (here a teacher that never answers) says where it is when asked,
    # as `kill -USR1 PID`, instead of a user reaching for py-spy or killing it blind.
    with run_in_thread(hang=True) as srv:
        proc, store = _live_generate(tmp_path, srv.url, "", "stuck")
        try:
            for line in proc.stderr:  # the first live line: the run is going
                if "stuck: queries" in line:
                    break
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            assert proc.poll() is None  # it printed, and goes on
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "most recent call first" in err and "Current thread" in err, err
    assert re.search(r'File ".*engine/run/\w+\.py", line \d+ in \w+', err), err
    # and every task's: a query waiting on its answer is in no thread's stack, only in its task's
    assert "Task " in err and re.search(r'engine/run/sending\.py", line \d+, in _attempt', err), err
    # (the hint names the store the run was given with --store: a bare `--resume` opens the default one)
    assert proc.returncode == 1 and (f"stopped by a signal; `generate --resume --store {tmp_path / 's.db'}` "
                                     "continues the run") in err, err
    # said at once, not only when the answers in flight came back (QA took the silence for a lost Ctrl-C)
    assert "stopping: nothing new starts; what is in flight gets up to 5s" in err, err


def test_a_roles_limit_that_binds_is_the_one_named():
    # It said "queries 15 of 20 (75.0%)" of a run its augmenter's limit (3 of 3) had ended (QA).
    led = Ledger(BudgetSpec(total=Limits(queries=20), roles={"augmenter": Limits(queries=3)}))
    led.spent["total"] = Amount(15, 100, 50, 0.0)
    led.spent["role:augmenter"] = Amount(3, 30, 10, 0.0)
    led.counts["settled"] = 15
    view = RunProgress(led, "r", enabled=False)
    assert "| augmenter queries 3 of 3 (100.0%) |" in view.summary("budget_exhausted")
    led.spent["role:augmenter"] = Amount(1, 10, 5, 0.0)  # a third of it: the total binds
    assert "| queries 15 of 20 (75.0%), $0.0000 |" in view.summary("budget_exhausted")


def test_a_rate_over_less_than_a_second_is_left_out_of_the_live_and_the_last_line():
    # The last line of a 100-query run that took 0.04 s read "2309.0 req/s": noise, not a rate.
    led = ledger_with(Amount(), Limits(queries=100))
    view = RunProgress(led, "quick", enabled=False, accepted=100)
    led.spent["total"], led.counts["settled"] = Amount(100, 1000, 500, 0.0), 100  # settled this session
    line = view.summary("completed")
    assert re.match(r"quick: completed after 0\.\d\ds \| ", line), line  # the duration instead
    assert "req/s" not in line and line.endswith("| 100 queries, tok 1000/500"), line
    view._t0 -= 4
    line = view.summary("completed")
    assert re.match(r"quick: completed after 4s \| ", line) and re.search(r"\| 2\d\.\d req/s$", line), line

    live = RunProgress(ledger_with(Amount(0, 0, 0, 0.0), Limits(queries=100)), "r", enabled=False)
    first = live.stats_line()  # the window spans nothing yet
    assert "req/s" not in first and "accepted/min" not in first and "ETA -" in first, first
    live.ledger.counts["settled"] = 50
    live.ledger.spent["total"] = Amount(50, 0, 0, 0.0)
    live._window[0] = (live._window[0][0] - 0.5, 0, 0.0, 0)  # half a second: still noise
    assert "req/s" not in live.stats_line()
    live._window[0] = (live._window[0][0] - 1.5, 0, 0.0, 0)  # two seconds
    line = live.stats_line()
    assert re.search(r"\| 2\d\.\d req/s, 0 accepted/min \| ETA \d+s \|", line), line


def test_the_last_line_can_say_why_a_run_completed_with_nothing_done():
    view = RunProgress(ledger_with(Amount(), Limits(queries=8)), "idle", enabled=False)
    assert view.summary("completed", "the plan had no items").startswith(
        "idle: completed (the plan had no items) after ")
    assert view.summary("completed").startswith("idle: completed after ")


def test_a_resumed_runs_last_line_rates_only_what_this_session_settled():
    # QA: a resume that settled 19 queries in 2 s read "19.5 req/s", counting the earlier sessions' 20.
    led = ledger_with(Amount(20, 200, 100, 0.0), Limits(queries=40))  # as replayed at the resume
    view = RunProgress(led, "again", enabled=False)
    led.spent["total"], led.counts["settled"] = Amount(40, 400, 200, 0.0), 40
    view._t0 -= 4
    assert view.summary("completed").endswith("| 40 queries, tok 400/200 | 5.0 req/s")  # 20 in 4 s


def test_the_resume_hint_names_the_store_a_bare_resume_would_not_find():
    """A resume without --config looks in the store --store or $SYNTHLEDGER_STORE names, else the
    default: the hints said `generate --resume`, which opened the default store (QA)."""
    from synthledger.engine.run.store_choice import StoreChoice, resume_words

    assert resume_words(StoreChoice("sqlite:////tmp/a b/s.db", "--store")) == "generate --resume --store '/tmp/a b/s.db'"
    assert resume_words(StoreChoice("postgresql+psycopg://me:secret@db/x", "--store")) == (
        "generate --resume with the same --store")  # (a password is never repeated)
    assert resume_words(StoreChoice("sqlite:////w/s.db", "[run] store in runs/gsm.toml")) == (
        "generate --config runs/gsm.toml --resume")
    assert resume_words(StoreChoice("sqlite:////w/s.db", "$SYNTHLEDGER_STORE")) == "generate --resume"
    assert resume_words(StoreChoice("sqlite:////w/s.db", "the default location")) == "generate --resume"
