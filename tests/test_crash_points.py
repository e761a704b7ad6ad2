"""A kill at every one of a run's commit points, each followed by `generate --resume`.

SYNTHLEDGER_EXIT_AFTER_COMMITS=N ends the process (os._exit, no cleanup: what SIGKILL leaves)
right after the N-th durable commit of its events. Walking N over a whole small run, and resuming
after each, proves what random kills only sample: wherever the process dies, the resumed run
spends exactly its budget, audits clean, exports one row per settled answer and no pair twice.
The fast default walks every point of one small answer-augmentation run; the `slow` loop does the
same for the strategies with an augmenter role and at a higher concurrency.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from synthledger.engine.ledger.crashpoints import ENV, EXIT_CODE, SIGNAL_ENV
from synthledger.testing.projects import write_project
from synthledger.testing.reliability import ServerProcess, check_run_exact, fork_cli, run_events

AUGMENTER = '''
[augmenter]
provider = "openai-compatible"
base_url = "{url}/v1"
model = "aug-model"
max_tokens = 48
'''
COMMON = '''
[limits]
max_concurrency = {concurrency}
backoff_base_s = 0.01
backoff_max_s = 0.05

[dedupe]
enabled = false
'''
STRATEGIES = {
    "answer_augmentation": ("", ""),
    "question_rephrase": ("", AUGMENTER),
    "new_question": ("check_well_posed = false\n", AUGMENTER),
    "mix": ('parts = [{name = "answer_augmentation", fraction = 0.5}, '
            '{name = "question_rephrase", fraction = 0.5}]\n', AUGMENTER),
    # answer augmentation plans one item per seed, under its share: it hands the rest over.
    "mix-finite": ('parts = [{name = "answer_augmentation", fraction = 0.5, samples_per_seed = 1}, '
                   '{name = "question_rephrase", fraction = 0.5}]\n', AUGMENTER),
}


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--latency-ms", "5") as srv:
        yield srv


def _project(folder: Path, url: str, strategy: str, budget: int, concurrency: int) -> Path:
    options, augmenter = STRATEGIES[strategy]
    extra = options + augmenter.format(url=url) + COMMON.format(concurrency=concurrency)
    return write_project(folder, url, name=f"crash-{strategy}", seeds=6, queries=budget,
                         strategy=strategy.removesuffix("-finite"), extra=extra)


def _commits(db: Path) -> int:
    """How many commits the run made: each commit stamps its batch of events with one time."""
    return len({ts for *_, ts in run_events(db)})


def _kill_at_every_commit(tmp: Path, url: str, strategy: str, budget: int, concurrency: int,
                          points: list[int] | None = None) -> int:
    base = tmp / "whole"
    config = _project(base, url, strategy, budget, concurrency)
    whole = fork_cli(["generate", "--config", str(config), "--no-progress", "--store",
                      f"sqlite:///{base / 'store.db'}"], cwd=base)
    assert whole.rc == 0, whole.stderr
    total = _commits(base / "store.db")
    assert total >= 3, total
    for n in points or range(1, total + 1):
        folder = tmp / f"kill-{n}"
        config = _project(folder, url, strategy, budget, concurrency)
        store = f"sqlite:///{folder / 'store.db'}"
        args = ["generate", "--config", str(config), "--no-progress", "--store", store]
        killed = fork_cli(args, cwd=folder, env={ENV: str(n)})
        # Batching varies from run to run: a run may finish in fewer commits than the measured one.
        assert killed.rc in (EXIT_CODE, 0), f"N={n}: rc {killed.rc}\n{killed.stderr}"
        resumed = fork_cli([*args, "--resume"], cwd=folder)
        if killed.rc == 0:  # nothing left to resume: the run finished before the N-th commit
            assert resumed.rc == 2 and "has finished" in resumed.stderr and "nothing to resume" in resumed.stderr, \
                resumed.stderr
        else:
            assert resumed.rc == 0, f"N={n}: resume failed (rc {resumed.rc})\n{resumed.stderr}"
            assert resumed.last_line()[2] in ("budget_exhausted", "completed"), resumed.stdout
        run_id = run_events_run_id(folder / "store.db")
        try:
            check_run_exact(store, run_id, budget)
        except AssertionError as exc:
            raise AssertionError(f"{strategy}, killed after commit {n} of {total}: {exc}") from None
    return total


def run_events_run_id(db: Path) -> str:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ids = [r[0] for r in con.execute("SELECT id FROM runs")]
    finally:
        con.close()
    assert len(ids) == 1, ids
    return ids[0]


def test_a_kill_after_every_commit_of_a_small_run_resumes_exactly(tmp_path, server):
    total = _kill_at_every_commit(tmp_path, server.url, "answer_augmentation", budget=4, concurrency=1)
    assert total >= 4


@pytest.mark.parametrize("strategy", ["question_rephrase", "new_question", "mix"])
def test_augmenter_strategies_survive_a_kill_at_their_first_and_last_commits(tmp_path, server, strategy):
    # The fast subset: the first commits (run start, first reservations) and the last ones.
    _kill_at_every_commit(tmp_path, server.url, strategy, budget=6, concurrency=1, points=[1, 2, 3, 5, 8])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("concurrency", [1, 4])
def test_every_commit_point_of_every_strategy(tmp_path, server, strategy, concurrency):
    _kill_at_every_commit(tmp_path, server.url, strategy, budget=8, concurrency=concurrency)


def _hand_over_commit(db: Path) -> int:
    """The number of the commit that recorded the run's one share hand-over."""
    events = run_events(db)
    [ts] = [ts for _, t, _, ts in events if t == "share_handed_over"]
    return sorted({ts for *_, ts in events}).index(ts) + 1


def test_a_kill_around_a_mix_hand_over_resumes_with_the_same_shares(tmp_path, server):
    """Answer augmentation (one item per seed: 6 queries) ends under its 8 of Q = 16 and hands the
    other 2 to the rephrase part. A kill just before, at and after the commit that records it: the
    resumed run records the hand-over exactly once (audit says so) with the same spend, and spends
    exactly 16 - which it cannot unless the resume rebuilt (or made again) the shares."""
    base = tmp_path / "whole"
    config = _project(base, server.url, "mix-finite", 16, 1)
    whole = fork_cli(["generate", "--config", str(config), "--no-progress", "--store",
                      f"sqlite:///{base / 'store.db'}"], cwd=base)
    assert whole.rc == 0, whole.stderr
    at = _hand_over_commit(base / "store.db")
    seen = set()
    for n in range(max(1, at - 3), at + 4):
        folder = tmp_path / f"kill-{n}"
        config = _project(folder, server.url, "mix-finite", 16, 1)
        store = f"sqlite:///{folder / 'store.db'}"
        args = ["generate", "--config", str(config), "--no-progress", "--store", store]
        killed = fork_cli(args, cwd=folder, env={ENV: str(n)})
        if killed.rc == 0:  # this run ended in fewer commits (group commits vary with timing): no kill
            continue
        assert killed.rc == EXIT_CODE, f"N={n}: rc {killed.rc}\n{killed.stderr}"
        seen.add(any(t == "share_handed_over" for _, t, _, _ in run_events(folder / "store.db")))
        resumed = fork_cli([*args, "--resume"], cwd=folder)
        assert resumed.rc == 0, f"N={n}: resume failed (rc {resumed.rc})\n{resumed.stderr}"
        checked = check_run_exact(store, run_events_run_id(folder / "store.db"), 16)
        # (a query out at the kill counts as spent: the part may have spent 7)
        spent = checked["report"].by_strategy["answer_augmentation"]["queries"]
        handed = [p for _, t, p, _ in run_events(folder / "store.db") if t == "share_handed_over"]
        assert [(p["strategy"], p["spent"]["queries"]) for p in handed] == [("answer_augmentation", spent)], n
    assert seen == {False, True}, "no kill landed on each side of the hand-over"


def test_a_kill_during_verification_leaves_every_paid_answer_decided(tmp_path, server):
    """A verifier that asks its own queries (self-consistency's votes), killed while a vote is out:
    that vote counts as spent on resume, so the budget its item pledged may no longer cover the
    verification. The paid answer must still get a decision (rejected, saying why), not be left a
    proposal that nothing exports or explains; and the run still spends exactly its budget."""
    extra = '[verifier]\nname = "self_consistency"\nk = 2\n' + COMMON.format(concurrency=1)
    budget = 3  # one item: its answer and two votes
    seen = []
    for n in range(2, 12):
        folder = tmp_path / f"kill-{n}"
        config = write_project(folder, server.url, name="verify", seeds=1, queries=budget, extra=extra)
        store = f"sqlite:///{folder / 'store.db'}"
        args = ["generate", "--config", str(config), "--no-progress", "--store", store]
        killed = fork_cli(args, cwd=folder, env={ENV: str(n)})
        if killed.rc == 0:
            break
        events = run_events(folder / "store.db")
        settled = {p["query_id"] for _, t, p, _ in events if t == "query_settled"}
        purpose = {p["query_id"]: p["purpose"] for _, t, p, _ in events if t == "query_reserved"}
        out = [q for _, t, p, _ in events if t == "query_dispatched" for q in [p["query_id"]] if q not in settled]
        resumed = fork_cli([*args, "--resume"], cwd=folder)
        assert resumed.rc == 0, f"N={n}: {resumed.stderr}"
        after = run_events(folder / "store.db")
        proposed = {p["sample_id"] for _, t, p, _ in after if t == "sample_proposed"}
        decided = {p.get("sample_id") for _, t, p, _ in after if t in ("sample_accepted", "sample_rejected")}
        assert proposed <= decided, f"N={n}: a proposed sample was never decided"
        if any(purpose.get(q) == "verify" for q in out) and "answer" in {purpose[q] for q in settled}:
            seen.append(n)  # the case this test is about: a vote out at the kill, the answer paid
            why = [p for _, t, p, _ in after if t == "sample_rejected"]
            assert [(w["stage"], w["kind"]) for w in why] == [("verification", "budget")], why
        from synthledger.engine.ledger.audit import audit_run
        from synthledger.store.eventstore import EventStore

        st = EventStore(store)
        report = audit_run(st, run_events_run_id(folder / "store.db"))
        st.close()
        assert report.ok and report.spent["queries"] == budget, (n, report.spent)
    assert seen, "no kill landed while a vote was out"


@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_a_signal_right_after_the_first_commit_stops_the_run_cleanly(tmp_path, server, sig):
    """Ctrl-C or SIGTERM between the run's first commit and its event loop listening for signals
    (~30 ms): SIGINT failed the run with the false reason "its event loop failed before the first
    query", SIGTERM killed the process and left the run `running`. Now the signal waits for the loop
    and stops the run as any other: interrupted, in one line, and `--resume` finishes it exactly."""
    config = _project(tmp_path, server.url, "answer_augmentation", budget=4, concurrency=1)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["generate", "--config", str(config), "--no-progress", "--store", store]
    stopped = fork_cli(args, cwd=tmp_path, env={SIGNAL_ENV: f"1:{sig}"})
    assert stopped.rc > 0 and "Traceback" not in stopped.stderr, (stopped.rc, stopped.stderr)
    assert stopped.last_line()[2] == "interrupted", stopped.stdout
    finished = [p for _, t, p, _ in run_events(tmp_path / "store.db") if t == "run_finished"]
    assert [p["status"] for p in finished] == ["interrupted"], finished
    resumed = fork_cli([*args, "--resume"], cwd=tmp_path)
    assert resumed.rc == 0, resumed.stderr
    check_run_exact(store, run_events_run_id(tmp_path / "store.db"), 4)


def test_a_bad_crash_point_count_is_said_once_and_ignored(monkeypatch, capfd):
    # "invalid literal for int()" failed the run's writer, naming no variable, the run left running.
    from synthledger.engine.ledger import crashpoints

    monkeypatch.setenv(crashpoints.ENV, "abc")
    crashpoints.committed()
    crashpoints.committed()
    err = capfd.readouterr().err
    assert err.count("SYNTHLEDGER_EXIT_AFTER_COMMITS='abc' is not a whole number; ignored") == 1, err
