"""Batch mode (`[teacher] batch = true`) for the openai and anthropic providers, end to end: the
real CLI against the test server's batch APIs, witnessed by the server's counts and `audit`."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import anthropic
import openai
import pytest
from synthledger.testing.cli_runs import Project, Server, last_line, wait_for

BATCH = {"batch": True, "batch_wait_s": 0.3, "batch_poll_s": 0.1}


@pytest.fixture
def project(tmp_path):
    servers: list[Server] = []

    def make(*server_args: str, seeds: int = 20) -> tuple[Project, Server]:
        srv = Server(*server_args)
        servers.append(srv)
        return Project(tmp_path, srv.url, seeds), srv

    yield make
    for srv in servers:
        srv.close()


def completed(proj: Project, res) -> dict:
    """The audit report of a run that `generate` ended as completed."""
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "completed"
    return proj.audit(run_id)


@pytest.mark.parametrize("provider, base", [("openai", "/v1"), ("anthropic", "")])
def test_a_batch_run_settles_every_query_at_batch_prices(project, provider, base):
    proj, srv = project("--batch-request-s", "0.001")
    cfg = proj.write(teacher={"provider": provider, "base_url": srv.url + base, "model": "gpt-4o-mini", **BATCH},
                     strategy={"samples_per_seed": 2}, budget={"queries": 40, "usd": 1.0},
                     # The online price, stated: genai-prices knows gpt-4o-mini only under provider openai.
                     pricing={"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.60}})
    res = proj.generate(cfg)
    report = completed(proj, res)
    stats = srv.stats()
    # OpenAI takes `n`: a seed's 2 samples are one line of the batch, its prompt paid once (below).
    lines = 20 if provider == "openai" else 40
    assert stats["batches"] == 1 and stats["batch_requests"] == lines and report["counts"]["settled"] == 40
    assert stats["received"] == 0  # nothing went through the online endpoints
    spent = report["spent"]
    assert (spent["input_tokens"], spent["output_tokens"]) == (stats["input_tokens"], stats["output_tokens"])
    # gpt-4o-mini online is $0.15 / $0.60 per million tokens; batches are half that.
    expected = (stats["input_tokens"] * 0.075 + stats["output_tokens"] * 0.30) / 1e6
    assert spent["usd"] == pytest.approx(expected, rel=1e-6)
    assert report["batches"] == {"batches": 1, "queries": 40, "ended": {"completed" if provider == "openai" else "ended": 1},
                                 "failed": 0}
    statuses = [e["status"] for e in proj.events("batch_status")]
    assert statuses[-1] in ("completed", "ended")
    # Reserved before submission: every query's reservation precedes the batch's preparation.
    prepared = proj.events("query_reserved", "batch_prepared")
    assert [e["type"] for e in prepared][-1] == "batch_prepared" and len(prepared) == 41


def killed_while_the_batch_runs(proj: Project, cfg: Path) -> None:
    """`generate` SIGKILLed once its batch is in progress at the provider, before any result."""
    proc = proj.popen(cfg)
    wait_for(lambda: any(e["status"] == "in_progress" for e in proj.events("batch_status")), 60, "the batch to run")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not proj.events("query_settled")


def test_killed_while_polling_then_resumed_polls_the_same_batch(project):
    proj, srv = project("--batch-request-s", "0.1", seeds=30)  # the batch takes ~3 s
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "gpt-4o-mini", **BATCH},
                     budget={"queries": 30}, strategy={"samples_per_seed": 1})
    killed_while_the_batch_runs(proj, cfg)
    res = proj.generate(cfg, "--resume")
    report = completed(proj, res)
    stats = srv.stats()
    assert stats["batches"] == 1, "the resumed run submitted the batch again"
    assert stats["batch_requests"] == 30 == report["counts"]["settled"] == report["spent"]["queries"]
    assert report["counts"]["lost"] == 0  # a batch outlives the process: nothing was charged unseen
    assert len(proj.events("batch_submitted")) == 1 and len(proj.events("batch_finished")) == 1


THREE_BATCHES = {"batch_size": 10, "batch_wait_s": 0.3, "batch_poll_s": 0.1}  # 30 queries: 3 alike


def batches_of(proj: Project, srv: Server, provider: str, timeout_s: float) -> Path:
    base = "/v1" if provider == "openai" else ""
    return proj.write(teacher={"provider": provider, "base_url": srv.url + base, "model": "gpt-4o-mini",
                               "batch": True, **THREE_BATCHES, "timeout_s": timeout_s},
                      budget={"queries": 30}, strategy={"samples_per_seed": 1})


def paid_once(proj: Project, srv: Server, res, batches: int = 3) -> None:
    """Every query went out in one batch, once: none was submitted again, none counted lost."""
    report = completed(proj, res)
    stats = srv.stats()
    assert stats["batches"] == batches, "a batch the provider had created was submitted again"
    assert report["counts"]["settled"] == 30 == report["spent"]["queries"] and report["counts"]["lost"] == 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_created_without_a_reply_is_found_and_followed_not_submitted_again(project, provider):
    # The second creation's reply never comes (a dropped connection after the provider acted): the
    # run looks it up. Anthropic's batches carry no key of ours, and the run's first and third
    # batches are the same size: taken as ambiguous, it was submitted again and paid twice.
    proj, srv = project("--batch-create-hang", "2", "--batch-request-s", "0.001", seeds=30)
    res = proj.generate(batches_of(proj, srv, provider, timeout_s=2.0), timeout=180)
    paid_once(proj, srv, res)
    assert srv.stats()["batch_requests"] == 30


@pytest.mark.parametrize("provider, hang, others", [("anthropic", "2", 0), ("openai", "1", 101)])
def test_killed_before_a_created_batch_was_recorded_the_resume_follows_it(project, provider, hang, others):
    # Killed while the provider holds a batch whose id the run never recorded. Anthropic: the run's
    # own earlier batch of the same size made it ambiguous. OpenAI: 101 newer batches (another job
    # of the organisation) pushed it off the list's first page. Either way it was "never created",
    # and its queries were submitted again.
    proj, srv = project("--batch-create-hang", hang, "--batch-request-s", "0.001", seeds=30)
    proc = proj.popen(batches_of(proj, srv, provider, timeout_s=60.0))
    wait_for(lambda: srv.stats()["batches"] >= int(hang), 60, "the batch to be created")
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    submitted = {e["batch_id"] for e in proj.events("batch_submitted")}
    assert len(submitted) < srv.stats()["batches"]  # the provider holds a batch the store does not name
    if others:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-test", max_retries=0)
        line = {"custom_id": "other", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
        upload = client.files.create(file=("other.jsonl", json.dumps(line).encode()), purpose="batch")
        for _ in range(others):
            client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    res = proj.generate(batches_of(proj, srv, provider, timeout_s=60.0), "--resume", timeout=180)
    paid_once(proj, srv, res, batches=3 + others)
    assert srv.stats()["batch_requests"] == 30 + others


def test_a_batch_that_cannot_be_told_apart_from_another_counts_as_spent(project):
    # Killed while Anthropic holds the run's first batch, unrecorded; another job then creates a batch
    # of the same size. Either may be the run's: its queries may have been billed, so they count as
    # spent (lost), and the rest of the budget pays for the answers still needed, never more.
    proj, srv = project("--batch-create-hang", "1", "--batch-request-s", "0.001", seeds=30)
    proc = proj.popen(batches_of(proj, srv, "anthropic", timeout_s=60.0))
    wait_for(lambda: srv.stats()["batches"] >= 1, 60, "the batch to be created")
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    client = anthropic.Anthropic(base_url=srv.url, api_key="sk-test", max_retries=0)
    client.messages.batches.create(requests=[
        {"custom_id": f"other-{i}", "params": {"model": "gpt-4o-mini", "max_tokens": 8,
                                               "messages": [{"role": "user", "content": "hi"}]}} for i in range(10)])
    res = proj.generate(batches_of(proj, srv, "anthropic", timeout_s=60.0), "--resume", timeout=180)
    assert res.returncode == 0, res.stderr
    report = proj.audit(last_line(res)[0])
    assert report["counts"]["lost"] == 10 and report["spent"]["queries"] == 30
    assert report["counts"]["settled"] == 20 and srv.stats()["batch_requests"] == 10 + 10 + 20
    finished = proj.events("batch_finished")
    assert finished[0]["status"] == "unknown" and "2 batches at the provider could be it" in finished[0]["message"]


def test_expired_requests_go_into_the_next_batch(project):
    # 40 requests at 20 ms each outlast a 0.5 s window: the first batch expires part done.
    proj, srv = project("--batch-request-s", "0.02", "--batch-validating-s", "0", "--batch-expire-s", "0.5",
                        seeds=40)
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "gpt-4o-mini", **BATCH},
                     budget={"queries": 40}, limits={"max_attempts": 4}, strategy={"samples_per_seed": 1})
    res = proj.generate(cfg, timeout=180)
    report = completed(proj, res)
    ends = [e["status"] for e in proj.events("batch_finished")]
    assert ends[0] == "expired" and ends[-1] == "completed" and len(ends) >= 2
    failed = proj.events("attempt_failed")
    assert failed and {e["kind"] for e in failed} == {"expired"} and not any(e["maybe_billed"] for e in failed)
    assert report["counts"]["settled"] == 40 == srv.stats()["batch_requests"] == report["spent"]["queries"]


@pytest.mark.parametrize("provider, base", [("openai", "/v1"), ("anthropic", "")])
def test_requests_a_batch_answered_with_errors_are_retried_in_the_next_batch_and_never_charged(project, provider,
                                                                                            base):
    # A quarter of each batch's requests come back as errors (OpenAI: the error file; Anthropic: an
    # `errored` result): known outcomes, so unbilled, and each goes again while it has attempts left.
    proj, srv = project("--batch-request-s", "0.001", "--batch-error-rate", "0.25", seeds=40)
    cfg = proj.write(teacher={"provider": provider, "base_url": srv.url + base, "model": "gpt-4o-mini", **BATCH},
                     budget={"queries": 40}, limits={"max_attempts": 8}, strategy={"samples_per_seed": 1})
    res = proj.generate(cfg, timeout=180)
    report = completed(proj, res)
    assert report["ok"]
    failed = proj.events("attempt_failed")
    assert failed and not any(e["maybe_billed"] for e in failed)
    stats = srv.stats()
    assert stats["batches"] >= 2  # the errored ones went out again, in a later batch
    # An Anthropic batch always "ended": the summary counts its requests that did not run.
    assert report["batches"]["failed"] == len(failed)
    assert stats["batch_requests"] == 40  # what the server answered: each query once, its errors aside
    assert report["counts"]["settled"] == 40 == report["spent"]["queries"]
    assert (report["spent"]["input_tokens"], report["spent"]["output_tokens"]) == (stats["input_tokens"],
                                                                                   stats["output_tokens"])


def test_a_refused_batch_releases_its_reservations(project):
    proj, srv = project("--batch-fail", seeds=5)
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "gpt-4o-mini", **BATCH},
                     budget={"queries": 5}, limits={"max_attempts": 2}, strategy={"samples_per_seed": 1})
    res = proj.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, _ = last_line(res)
    report = proj.audit(run_id)
    assert report["spent"]["queries"] == 0 and report["counts"]["abandoned"] == 5
    assert [e["status"] for e in proj.events("batch_finished")] == ["failed", "failed"]
    # Refused at validation, not expired: `show` and `audit` name what happened.
    assert {e["kind"] for e in proj.events("attempt_failed")} == {"batch_failed"}
    assert all(e["reason"].startswith("batch_failed after 2 attempt(s)") for e in proj.events("query_abandoned"))
    assert {e["stage"] for e in proj.events("sample_rejected")} == {"failed"}


@pytest.mark.parametrize("server_args, base", [(("--batch-fail",), "/v1")])  # every batch fails validation
def test_batches_refused_in_a_row_stop_the_run(project, server_args, base):
    # (A base_url whose uploads are all 404s stops sooner, at the first: test_misconfiguration.)
    # A refused batch costs nothing, so with a plan that has no end the budget never stopped the run:
    # it submitted a new batch every few hundred milliseconds until killed (1.2 GB in ten minutes).
    proj, srv = project(*server_args, seeds=5)
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + base, "model": "gpt-4o-mini", **BATCH},
                     budget={"queries": 30}, limits={"max_attempts": 6})  # answer augmentation: no end of its own
    res = proj.generate(cfg)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    run_id, status = last_line(res)
    assert status == "failed" and "batches are refused (3 in a row, none run" in res.stderr, res.stderr
    assert len(proj.events("batch_finished")) == 3
    report = proj.audit(run_id)
    assert report["spent"]["queries"] == 0


def test_batches_over_the_enqueued_token_limit_get_smaller_or_wait_and_the_run_completes(project):
    # OpenAI caps the prompt tokens of a model's batches still running (90,000 for gpt-4o at tier 1):
    # a batch over it fails at validation with token_limit_exceeded. That was three refusals in a
    # row and a stopped run. The cap here holds about 25 of these requests.
    proj, srv = project("--batch-request-s", "0.005", "--batch-enqueued-tokens", "1200", seeds=60)
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "gpt-4o-mini", **BATCH,
                              "batch_size": 100},
                     budget={"queries": 60}, limits={"max_attempts": 2}, strategy={"samples_per_seed": 1})
    res = proj.generate(cfg, timeout=180)
    report = completed(proj, res)
    stats = srv.stats()
    assert report["counts"]["settled"] == 60 == report["spent"]["queries"] == stats["batch_requests"]
    assert report["counts"]["abandoned"] == 0  # two attempts each would not have survived the refusals
    ends = [e["status"] for e in proj.events("batch_finished")]
    assert ends[0] == "failed" and ends.count("completed") >= 3, ends
    prepared = [len(e["query_ids"]) for e in proj.events("batch_prepared")]
    assert prepared[0] == 60 and max(prepared[1:]) <= 25, prepared
    warned = [e for e in proj.events("run_warning") if e["kind"] == "batch_token_limit"]
    assert len(warned) == 1 and "enqueued token limit (1,200 tokens)" in warned[0]["message"]
    assert "batch_size" in warned[0]["message"] and "Traceback" not in res.stderr


@pytest.mark.parametrize("provider, base", [("openai", "/v1"), ("anthropic", "")])
def test_a_batch_refused_as_too_large_is_halved_until_one_goes_through(project, provider, base):
    # OpenAI refuses a batch input file over 200 MB ("File is too large.") and Anthropic a batch over
    # 256 MB (413). Each refusal took an attempt from every query in it, and three stopped the run:
    # long prompts at a large batch_size never ran. Here the server takes 8,000 bytes, about 20 requests.
    proj, srv = project("--batch-request-s", "0.002", "--batch-max-bytes", "8000", seeds=60)
    cfg = proj.write(teacher={"provider": provider, "base_url": srv.url + base, "model": "gpt-4o-mini", **BATCH,
                              "batch_size": 100},
                     budget={"queries": 60}, limits={"max_attempts": 2}, strategy={"samples_per_seed": 1})
    res = proj.generate(cfg, timeout=180)
    report = completed(proj, res)
    assert report["counts"]["settled"] == 60 == report["spent"]["queries"] == srv.stats()["batch_requests"]
    assert report["counts"]["abandoned"] == 0  # two attempts each would not have survived the refusals
    sizes = {e["key"]: len(e["query_ids"]) for e in proj.events("batch_prepared")}
    ends = {e["key"]: e["status"] for e in proj.events("batch_finished")}
    refused = [sizes[k] for k, status in ends.items() if status == "not_submitted"]
    ran = [sizes[k] for k, status in ends.items() if status != "not_submitted"]
    # 60 refused, then 30 (with its twin, prepared before the first answer came back), then 15s run.
    assert refused[0] == 60 and len(refused) <= 3 and min(refused) == 30 and max(ran) == 15, (refused, ran)
    warned = [e["message"] for e in proj.events("run_warning") if e["kind"] == "batch_too_large"]
    assert len(warned) == 1 and "refused a batch of 60 requests" in warned[0], warned
    assert re.search(r"batch_max_mb below 0\.0\d+ \(this batch.s size\)", warned[0]), warned
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("provider, base", [("openai", "/v1"), ("anthropic", "")])
def test_batches_are_cut_to_the_bytes_the_provider_takes_before_any_is_refused(project, provider, base):
    proj, srv = project("--batch-request-s", "0.002", "--batch-max-bytes", "8000", seeds=60)
    cfg = proj.write(teacher={"provider": provider, "base_url": srv.url + base, "model": "gpt-4o-mini", **BATCH,
                              "batch_size": 100, "batch_max_mb": 0.008},
                     budget={"queries": 60}, strategy={"samples_per_seed": 1})
    report = completed(proj, proj.generate(cfg, timeout=180))
    assert report["counts"]["settled"] == 60 == srv.stats()["batch_requests"]
    prepared = [len(e["query_ids"]) for e in proj.events("batch_prepared")]
    assert len(prepared) >= 3 and sum(prepared) == 60 and max(prepared) >= 15, prepared  # full, not tiny
    assert {e["status"] for e in proj.events("batch_finished")} <= {"completed", "ended"}
    assert not [e for e in proj.events("run_warning") if e["kind"] == "batch_too_large"]


def test_batch_mode_needs_a_provider_with_a_batch_api(project):
    proj, srv = project()
    cfg = proj.write(teacher={"batch": True})
    res = proj.generate(cfg)
    assert res.returncode != 0
    assert "batch" in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (proj.dir / "store.db").exists() or not proj.events("run_started")


def test_the_live_view_shows_batch_states_and_pacing_changes():
    from synthledger.engine.ledger.ledger import BudgetSpec, Ledger
    from synthledger.engine.run.progress import batch_line, pacing_line

    led = Ledger(BudgetSpec())
    for seq, (t, p) in enumerate([
        ("query_reserved", {"query_id": "q1", "key": "k", "role": "teacher", "purpose": "answer", "strategy": "s",
                            "item": "i", "provider": "openai", "model": "m", "worst": {"queries": 1}}),
        ("batch_prepared", {"key": "b1", "provider": "openai", "model": "m", "role": "teacher", "query_ids": ["q1"],
                            "at": 0.0}),
        ("batch_status", {"key": "b1", "status": "in_progress", "counts": {"total": 1, "completed": 0, "failed": 0}}),
        ("rate_adjusted", {"model": "m", "note": "paused 1s: 429 while sending at 5% of the paced rate",
                           "factor": 1.0, "pause_s": 1.0}),
    ], 1):
        led.apply(seq, t, p)
    assert batch_line(led) == " | batches: in_progress 0/1"
    assert "paused 1s" in pacing_line(led)
    led.apply(5, "batch_status", {"key": "b1", "status": "finalizing", "counts": {"total": 1, "completed": 1}})
    assert batch_line(led) == " | batches: finalizing 1/1"


def test_a_dollar_budget_fills_batches_not_one_query_each(project):
    # Items the budget bounced while others' worst cases were held were rerun one by one, so each
    # waited batch_wait_s for a batch of one query: QA's batches went 7, 1, 1, 1, ... (21 batches in
    # two minutes for 23 queries).
    proj, srv = project("--batch-request-s", "0.001", seeds=20)
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "test-teacher",
                              "max_tokens": 200, **BATCH},
                     strategy={"samples_per_seed": 4}, budget={"usd": 0.004},
                     pricing={"test-teacher": {"input_per_mtok": 1.0, "output_per_mtok": 4.0}})
    res = proj.generate(cfg, timeout=300)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    report = proj.audit(run_id)
    assert report["ok"] and status == "budget_exhausted" and report["spent"]["usd"] <= 0.004
    settled, batches = report["counts"]["settled"], srv.stats()["batches"]
    assert settled >= 15 and batches <= settled / 3, (settled, batches)


def test_k_samples_of_a_seed_go_as_one_n_line_and_a_resume_gives_each_answer_to_its_query(project):
    # OpenAI's batch lines take `n` as its online endpoint does: 4 samples of a seed are one line,
    # its prompt paid once. Killed while the batch runs, the resume must know which of the line's
    # answers belongs to which query (recorded with the batch), or they would be lost and re-asked.
    proj, srv = project("--batch-request-s", "0.2", seeds=10)  # the batch takes ~2 s
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "gpt-4o-mini", **BATCH},
                     budget={"queries": 40}, strategy={"samples_per_seed": 4})
    killed_while_the_batch_runs(proj, cfg)
    (prepared,) = proj.events("batch_prepared")
    assert len(prepared["query_ids"]) == 40 and len(prepared["lines"]) == 10
    assert all(len(qids) == 4 and qids[0] == cid for cid, qids in prepared["lines"].items())
    res = proj.generate(cfg, "--resume")
    report = completed(proj, res)
    stats = srv.stats()
    assert stats["batches"] == 1 and stats["batch_requests"] == 10, "the resumed run submitted the batch again"
    assert report["counts"]["settled"] == 40 == report["spent"]["queries"] and report["counts"]["lost"] == 0
    assert (report["spent"]["input_tokens"], report["spent"]["output_tokens"]) == (stats["input_tokens"],
                                                                                   stats["output_tokens"])
    assert report["shared_requests"]["requests"] == 10 and report["shared_requests"]["queries"] == 40
    texts = {e["query_id"]: e["text"] for e in proj.events("query_settled")}
    assert len(set(texts.values())) > 10  # each query its own answer, not its line's first
    assert len(proj.events("sample_proposed")) == 40  # every answer reached the dataset


def test_an_n_line_that_fails_in_its_batch_goes_again_whole_and_is_never_charged(project):
    proj, srv = project("--batch-request-s", "0.001", "--batch-error-rate", "0.3", seeds=10)
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "gpt-4o-mini", **BATCH},
                     budget={"queries": 40}, limits={"max_attempts": 8}, strategy={"samples_per_seed": 4})
    res = proj.generate(cfg, timeout=180)
    report = completed(proj, res)
    failed = proj.events("attempt_failed")
    assert failed and not any(e["maybe_billed"] for e in failed) and len(failed) % 4 == 0  # a line's 4 together
    stats = srv.stats()
    assert stats["batches"] >= 2 and stats["batch_requests"] == 10
    assert report["counts"]["settled"] == 40 == report["spent"]["queries"]
    assert report["shared_requests"]["requests"] == 10


def test_batch_results_cut_off_count_as_spent_and_the_run_ends_cleanly(project):
    # The last line of each output file is cut off mid-way (a gateway, a broken transfer): those
    # requests ran and may be billed. The run crashed with a JSON traceback, or hung for good.
    proj, srv = project("--batch-request-s", "0.001", "--batch-cut-lines", "1", seeds=10)
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "gpt-4o-mini", **BATCH},
                     budget={"queries": 12}, strategy={"samples_per_seed": 1})
    res = proj.generate(cfg, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    run_id, status = last_line(res)
    assert status == "budget_exhausted"
    report = proj.audit(run_id)
    stats = srv.stats()
    # Every request the server ran is paid for in the ledger (the unreadable ones at their worst case).
    assert report["spent"]["queries"] == stats["batch_requests"] == 12
    failed = proj.events("attempt_failed")
    assert failed and all(e["kind"] == "malformed" and e["maybe_billed"] for e in failed)
    assert report["counts"]["settled"] == 12 - len(failed)


def test_a_batch_that_can_no_longer_be_polled_stops_the_run_and_a_resume_follows_it(project):
    # The key is revoked while the batch runs: every poll is a 401. It was polled every 5 s for
    # ever, saying nothing. Now the run stops in one line; the batch stays with the provider, and a
    # resume with a working key follows it instead of submitting it again.
    proj, srv = project("--batch-request-s", "0.5", seeds=8)  # ~4 s in progress
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "gpt-4o-mini", **BATCH},
                     budget={"queries": 8}, strategy={"samples_per_seed": 1})
    proc = proj.popen(cfg)
    wait_for(lambda: proj.events("batch_submitted"), 60, "the batch to be submitted")
    srv.control(require_api_key="sk-rotated")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and any("cannot poll batch" in ln and "--resume" in ln for ln in lines), err
    assert not proj.events("query_settled")
    srv.control(require_api_key=None)
    res = proj.generate(cfg, "--resume")
    report = completed(proj, res)
    assert srv.stats()["batches"] == 1 and report["counts"]["settled"] == 8 == report["spent"]["queries"]


def test_the_audit_text_counts_the_attempts_a_batch_did_not_run():
    from synthledger.engine.ledger.audit_sharing import summary_lines

    (line,) = summary_lines({"batches": {"batches": 2, "queries": 24, "ended": {"ended": 2}, "failed": 4}})
    assert line == ("24 query attempts went out in 2 provider batches (ended 2); 4 of the attempts failed, expired "
                    "or were cancelled (retried or released)")
    (line,) = summary_lines({"batches": {"batches": 1, "queries": 20, "ended": {"completed": 1}, "failed": 0}})
    assert line == "20 query attempts went out in 1 provider batches (completed 1)"
