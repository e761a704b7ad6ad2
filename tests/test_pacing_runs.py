"""Pacing whole runs under a provider's limit, with OpenAI's unkind 429s (a whole-second
`retry-after` only) and the kind variant (`retry-after-ms`): a 429 costs one slot, limits are
learned from headers, and 429s our pacing cannot explain pause the endpoint, visibly."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

from synthledger.testing.cli_runs import Project, Server, last_line


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


def completed_run(proj, cfg):
    """Run `generate`; it must complete. Its result and run id."""
    res = proj.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "completed", res.stdout
    return res, run_id


@pytest.mark.parametrize("style", ["openai", "kind"])
def test_a_paced_run_meets_few_429s_and_never_pauses(project, style):
    proj, srv = project("--rpm", "1200", "--window-s", "1", "--latency-ms", "20", "--rate-headers", style, seeds=100)
    cfg = proj.write(limits={"requests_per_minute": 1200, "max_concurrency": 32}, budget={"queries": 100},
                     strategy={"samples_per_seed": 1})
    _, run_id = completed_run(proj, cfg)
    report = proj.audit(run_id)
    stats = srv.stats()
    assert report["counts"]["settled"] == 100 == stats["answered"]
    # A near miss now and then on a busy machine; a storm (or a paused second per 429) would be far more.
    assert stats["rate_limited"] <= 0.08 * stats["received"], stats
    assert not [e for e in proj.events("rate_adjusted") if e["pause_s"]], "a 429 paused the endpoint"
    assert not [e for e in proj.events("sample_rejected") if e["stage"] == "failed"]


@pytest.mark.parametrize("configured", [True, False], ids=["configured", "learned"])
def test_a_known_rate_gets_the_concurrency_its_latency_needs(project, configured):
    """100 requests/s at 2 s of latency needs ~200 in flight (Little's law). With `max_concurrency`
    left unset it used to stop at 64: a third of the limit, whatever the rate said."""
    proj, srv = project("--rpm", "6000", "--window-s", "1", "--latency-ms", "2000", "--rate-headers", "openai",
                        seeds=400)
    limits = {"requests_per_minute": 6000} if configured else {}
    cfg = proj.write(limits=limits, budget={"queries": 400}, strategy={"samples_per_seed": 1})
    _, run_id = completed_run(proj, cfg)
    assert proj.audit(run_id)["counts"]["settled"] == 400 == srv.stats()["answered"]
    answered = sorted(e["t"] for e in srv.stats(log=True)["log"] if e["outcome"] == "answered")
    # 64 in flight at 2 s each is 32 answers a second; the limit is 100.
    rate = (300 - 1) / (answered[-1] - answered[-300])
    assert rate >= 70, rate


def forty_unconfigured(project, provider: str, *server_args: str):
    """40 queries at 600 RPM with no limit in the config: what the engine knows, the server told it."""
    proj, srv = project("--rpm", "600", "--window-s", "1", "--latency-ms", "20", *server_args, seeds=40)
    teacher = ({"provider": "anthropic", "base_url": srv.url, "model": "claude-3-5-haiku-latest"}
               if provider == "anthropic" else {})  # Anthropic announces anthropic-ratelimit-* instead
    cfg = proj.write(limits={"max_concurrency": 32}, budget={"queries": 40}, strategy={"samples_per_seed": 1},
                     teacher=teacher)
    _, run_id = completed_run(proj, cfg)
    return proj, srv, proj.audit(run_id)


@pytest.mark.parametrize("style, provider", [("openai", "openai-compatible"), ("kind", "openai-compatible"),
                                             ("openai", "anthropic")])
def test_limits_are_learned_from_the_headers(project, style, provider):
    proj, srv, report = forty_unconfigured(project, provider, "--rate-headers", style)
    learned = [e for e in proj.events("rate_adjusted") if "learned" in e["note"]]
    assert learned and learned[0]["rpm"] == 600
    stats = srv.stats()
    assert report["counts"]["settled"] == 40 == stats["answered"]
    # Slow start probes with 4 before the first answer teaches the limit: no 429 storm.
    assert stats["rate_limited"] <= 0.1 * stats["received"], stats
    assert "learned" in " ".join(report["pacing"]["notes"])


def test_a_per_day_requests_header_is_not_taken_for_the_per_minute_limit(project):
    """Groq's `x-ratelimit-limit-requests` counts per day: learned as per minute it is 480 times the
    real pace. Its 429s contradict it; the run drops it, says why, and loses nothing."""
    proj, srv, report = forty_unconfigured(project, "openai-compatible", "--rate-headers", "groq")
    assert report["ok"] and report["counts"]["settled"] == 40 == srv.stats()["answered"]
    notes = [e["note"] for e in proj.events("rate_adjusted")]
    assert any("learned" in n and "288000 requests/min" in n for n in notes), notes
    dropped = [e for e in proj.events("rate_adjusted") if e["note"].startswith("stopped pacing")]
    assert len(dropped) == 1 and dropped[0]["rpm"] is None, notes
    assert not [e for e in proj.events("sample_rejected") if e["stage"] == "failed"]


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
def test_a_provider_with_garbled_rate_headers_loses_no_query(project, provider):
    """`retry-after: inf` and limits of `inf` teach nothing: the run neither sleeps forever nor loses
    the answers such headers came with, and ends with every query settled."""
    proj, srv, report = forty_unconfigured(project, provider, "--garbled-headers")
    assert report["ok"] and report["counts"]["settled"] == 40 == srv.stats()["answered"]
    assert not [e for e in proj.events("rate_adjusted") if "learned" in e["note"]]
    assert all(e["retry_after"] is None for e in proj.events("attempt_failed"))


def test_a_provider_that_announces_no_limit_is_paced_at_what_it_accepted(project):
    """No rate headers and nothing configured: a 429's whole-second `retry-after` was all there was
    to go by, and pausing everything for it at each 429 used about 0.6 of a 1-second window. The
    first 429 now sets a pace from what the provider accepted in the second before it."""
    proj, srv = project("--rpm", "1200", "--window-s", "1", "--latency-ms", "20", "--rate-headers", "none",
                        seeds=120)
    cfg = proj.write(limits={"max_concurrency": 32}, budget={"queries": 120}, strategy={"samples_per_seed": 1})
    res = proj.generate(cfg)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    report = proj.audit(run_id)
    assert status == "completed" and report["ok"] and report["counts"]["settled"] == 120 == srv.stats()["answered"]
    notes = proj.events("rate_adjusted")
    inferred = [e for e in notes if "what the provider accepted in the second before its first 429" in e["note"]]
    assert len(inferred) == 1 and 17 * 60 <= inferred[0]["rpm"] <= 23 * 60, notes
    after = notes[notes.index(inferred[0]) + 1:]
    assert not [e for e in after if e["pause_s"]], after  # each later 429 cost its own slot, nothing more
    log = srv.stats(log=True)["log"]
    answered = sorted(e["t"] for e in log if e["outcome"] == "answered")
    # Over the last 100 answers the provider's 20 a second was used (a paused second would show).
    assert (100 - 1) / (answered[-1] - answered[-100]) >= 0.9 * 20, answered[-100:]


def _flood(url: str, stop: threading.Event) -> None:
    body = json.dumps({"model": "other-client", "max_tokens": 5,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    while not stop.is_set():
        req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except urllib.error.HTTPError:
            pass


def test_429s_from_a_shared_key_pause_the_endpoint_visibly(project):
    # We pace 6000 RPM but send far less (2 in flight); another client takes the whole 10/s. The
    # provider announces no limit (a 600 it announced would now be paced instead of the configured 6000).
    proj, srv = project("--rpm", "600", "--window-s", "1", "--latency-ms", "50", "--rate-headers", "none", seeds=12)
    cfg = proj.write(limits={"requests_per_minute": 6000, "max_concurrency": 2}, budget={"queries": 12},
                     strategy={"samples_per_seed": 1})
    stop = threading.Event()
    flooders = [threading.Thread(target=_flood, args=(srv.url, stop), daemon=True) for _ in range(3)]
    for t in flooders:
        t.start()
    time.sleep(0.5)
    proc = proj.popen(cfg)
    time.sleep(2.5)
    stop.set()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    run_id = out.strip().splitlines()[-1].split()[1]
    report = proj.audit(run_id)
    pauses = [e for e in proj.events("rate_adjusted") if e["pause_s"]]
    assert pauses and "shared" in pauses[0]["note"] and all(e["pause_s"] <= 30 for e in pauses)
    assert report["counts"]["settled"] == 12 and report["pacing"]["pauses"] == len(pauses)
    assert not [e for e in proj.events("sample_rejected") if e["stage"] == "failed"]


def test_a_configured_limit_above_the_announced_one_is_paced_at_the_announced_one_and_said_once(project):
    """[limits] requests_per_minute = 6000 against a provider that announces (and enforces) 120: the
    announced figure was never compared with the configured one, so the run paced 6000 and each 429
    read '429 while sending at 4% of the paced rate (is the key shared with another client?)', with
    a pause for each. The provider's announced limit is what it enforces: the run paces to it and
    says once, as a warning the live view and `show` carry, that the configured figure is too high."""
    proj, srv = project("--rpm", "120", "--window-s", "1", "--latency-ms", "20", seeds=16)
    cfg = proj.write(limits={"requests_per_minute": 6000, "max_concurrency": 8}, budget={"queries": 16},
                     strategy={"samples_per_seed": 1})
    res, run_id = completed_run(proj, cfg)
    said = "the provider announces 120 requests/min, below the configured 6000; pacing to 120"
    assert res.stderr.count(said) == 1, res.stderr  # the live view's warning, once
    warnings = [w for w in proj.events("run_warning") if w["kind"] == "limit_above_provider"]
    assert len(warnings) == 1 and said in warnings[0]["message"]
    lowered = [e for e in proj.events("rate_adjusted") if e["note"] == said]
    assert len(lowered) == 1 and lowered[0]["rpm"] == 120, proj.events("rate_adjusted")
    report = proj.audit(run_id)
    assert report["counts"]["settled"] == 16 == srv.stats()["answered"]
    assert not [e for e in proj.events("rate_adjusted") if e["pause_s"]], "429s at the configured pace paused it"
    stats = srv.stats()
    # Slow start sends a few before the first answer announces the limit; after it, near misses at most.
    assert stats["rate_limited"] <= 6, stats
    shown = proj.cli("show", run_id, "--store", proj.store)
    assert shown.returncode == 0 and said in " ".join(shown.stdout.split()), shown.stdout


@pytest.mark.parametrize("configured", [False, True], ids=["learned", "configured"])
def test_a_run_paces_output_tokens_by_what_was_written_not_prompt_plus_max_tokens(project, configured):
    """1,000 output tokens a second, max_tokens 64, replies of ~31 words: ~32 requests a second fit.
    Paced as prompt + max_tokens against the output limit (all the old reading of `tokens-*` knew),
    a request took ~111 tokens of it: ~9 a second, 0.28 of the limit. Configured, the server says
    nothing of its limits."""
    proj, srv = project("--otpm", "60000", "--itpm", "6000000", "--window-s", "1", "--latency-ms", "50",
                        *(("--rate-headers", "none") if configured else ()), seeds=300)
    limits = {"output_tokens_per_minute": 60000, "input_tokens_per_minute": 6e6} if configured else {}
    cfg = proj.write(teacher={"provider": "anthropic", "base_url": srv.url, "model": "test-teacher",
                              "max_tokens": 64},
                     budget={"queries": 300}, strategy={"samples_per_seed": 1}, limits=limits)
    res = proj.generate(cfg, timeout=300)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    assert status == "completed", res.stdout
    stats = srv.stats(log=True)
    answered = sorted(e["t"] for e in stats["log"] if e["outcome"] == "answered")
    assert len(answered) == 300 == proj.audit(run_id)["counts"]["settled"]
    per_s = stats["output_tokens"] / (answered[-1] - answered[0])
    assert per_s >= 0.7 * 1000, (per_s, stats["rate_limited"])
    # Near misses when the machine is busy (fresh-clone CI runs: 5.7%, 6.8%, 12.3%; alone: 0 or 1 of
    # ~300): sends bunch behind slow durable commits, and this server's 1 s window is stricter than
    # Anthropic's bucket. The claim here is the throughput above and no pause; this only rules out a
    # storm (an unpaced client meets far more).
    assert stats["rate_limited"] <= 0.25 * stats["received"], stats
    assert not [e for e in proj.events("rate_adjusted") if e["pause_s"]], "a 429 paused the endpoint"
    learned = " ".join(e["note"] for e in proj.events("rate_adjusted"))
    if configured:  # paced from the start by the config, not by a rate inferred from 429s
        assert "no limit is configured or announced" not in learned, learned
    else:
        assert "60000 output_tokens/min" in learned and "6e+06 input_tokens/min" in learned, learned


@pytest.mark.parametrize("configured", [False, True], ids=["learned", "configured"])
def test_requests_large_against_a_per_second_token_limit_go_one_a_second_without_a_429_storm(project, configured):
    """60,000 TPM enforced per second admits one request of ~550 tokens (prompt + max_tokens 512) a
    second. Paced on average the run sent two a second, and every refused one was refunded, so the
    next went at once into the same full second: 407 429s for 10 answers, items failed after 24
    attempts (exploratory QA). Learned, a few meet a 429 before the first reply says the limit."""
    proj, srv = project("--tpm", "60000", "--window-s", "1", "--latency-ms", "50", seeds=10)
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "test-teacher",
                              "max_tokens": 512},
                     budget={"queries": 10}, strategy={"samples_per_seed": 1},
                     limits={"tokens_per_minute": 60000} if configured else {})
    res = proj.generate(cfg, timeout=300)
    assert res.returncode == 0, res.stderr
    run_id, status = last_line(res)
    report = proj.audit(run_id)
    stats = srv.stats()
    assert report["counts"]["settled"] == 10 == stats["answered"] and not proj.events("query_abandoned")
    assert stats["rate_limited"] <= (3 if configured else 12), stats


@pytest.mark.parametrize("configured", [False, True], ids=["learned", "configured"])
def test_n_sample_requests_against_a_per_second_token_limit_go_without_a_429_storm(project, configured):
    """n = 2 requests of ~450 tokens against 36,000 TPM enforced per second (600 a second): one fits
    a second. The window check dropped the sends still in the window whenever it looked ahead to
    when the average pace allowed the next: QA saw requests go 20 ms apart, 179 of 201 refused."""
    proj, srv = project("--tpm", "36000", "--window-s", "1", "--latency-ms", "50", seeds=10)
    cfg = proj.write(teacher={"provider": "openai", "base_url": srv.url + "/v1", "model": "test-teacher",
                              "max_tokens": 200},
                     budget={"queries": 20}, strategy={"samples_per_seed": 2},
                     limits={"tokens_per_minute": 36000} if configured else {})
    res = proj.generate(cfg, timeout=300)
    assert res.returncode == 0, res.stderr
    stats = srv.stats()
    assert stats["answered"] == 10 and stats["choices"] == 20, stats  # ten n = 2 requests
    assert stats["rate_limited"] <= (3 if configured else 12), stats


def test_a_paced_run_sends_its_first_request_before_it_starts_every_item_it_has_room_for(project):
    """256 in flight leaves room for 512 items. Started in one go, every one of them was reserved
    (its events written) before the run's first request went out; at the ~1,200 items Little's law
    gives 6000 RPM that held the first request back ~0.3 s, slots a paced run never gets back."""
    proj, srv = project("--rpm", "60000", "--window-s", "1", "--latency-ms", "0", seeds=600)
    cfg = proj.write(limits={"requests_per_minute": 60000, "max_concurrency": 256}, budget={"queries": 600},
                     strategy={"samples_per_seed": 1})
    _, run_id = completed_run(proj, cfg)
    first_request = min(e["t"] for e in srv.stats(log=True)["log"])
    con = sqlite3.connect(f"file:{proj.dir / 'store.db'}?mode=ro", uri=True)
    try:
        (before,), = con.execute("SELECT count(*) FROM events WHERE type = 'query_reserved' AND ts < ?",
                                 (first_request,)).fetchall()
    finally:
        con.close()
    assert before < 128, f"{before} queries were reserved before the first request went out"
    assert proj.audit(run_id)["counts"]["settled"] == 600


def test_every_pause_for_a_providers_retry_after_is_counted(project):
    """A 429 storm's pauses are said together ("13 pauses since the last note"), one event per 10 s;
    `show` and `audit` counted one pause per event (3 where the notes said 24), and the pauses since
    the last note were never recorded at all."""
    import re

    proj, srv = project("--rpm", "60", "--window-s", "2", "--rate-headers", "none", seeds=30)
    cfg = proj.write(budget={"queries": 30}, strategy={"samples_per_seed": 1})
    _, run_id = completed_run(proj, cfg)
    notes = [e for e in proj.events("rate_adjusted")]
    said = 0
    for e in notes:
        m = re.search(r"\((\d+) pauses? since the last note\)|paused (\d+) more times? for", e["note"])
        said += int(m.group(1) or m.group(2)) if m else (1 if e["pause_s"] else 0)
    report = proj.audit(run_id)
    assert said > len([e for e in notes if e["pause_s"]]), notes  # the storm's pauses were said together
    assert report["counts"]["pauses"] == said == report["pacing"]["pauses"], (report["counts"], notes)
    assert said <= srv.stats()["rate_limited"]
