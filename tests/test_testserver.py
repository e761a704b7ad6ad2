"""The test teacher server speaks both protocols faithfully and injects every fault it claims to."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from synthledger.engine.api import utf8_prompt_bound
from synthledger.testing.server import ServerConfig, TeacherServer, run_in_thread

ANTHROPIC_HEADERS = {"anthropic-version": "2026-10-21"}


def chat_body(content: str = "What is 6 times 7?", **kw):
    return {"model": "test-teacher", "messages": [{"role": "user", "content": content}], "max_tokens": 200, **kw}


@pytest.fixture
async def serve():
    servers: list[TeacherServer] = []

    async def start(**kw) -> TeacherServer:
        srv = TeacherServer(ServerConfig(**kw))
        await srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http, url, body, headers=None):
    async with http.post(url, json=body, headers=headers or {}) as r:
        return r.status, r.headers.copy(), await r.read()  # case-insensitive


async def test_openai_completion_shape_tokens_and_n(serve, http):
    srv = await serve()
    messages = [{"role": "system", "content": "Think step by step."}, {"role": "user", "content": "Ünïcode question?"}]
    status, _, raw = await post(http, srv.url + "/v1/chat/completions", {**chat_body(), "messages": messages, "n": 3})
    assert status == 200
    data = json.loads(raw)
    assert data["object"] == "chat.completion" and [c["index"] for c in data["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in data["choices"]]
    assert len(set(texts)) == 3, "samples of one prompt must differ"
    assert all("\n#### " in t and t.startswith("Step 1:") for t in texts)
    expected_prompt = sum(len(m["content"].encode()) for m in messages) // 4
    assert data["usage"]["prompt_tokens"] == expected_prompt < utf8_prompt_bound(messages)
    assert data["usage"]["completion_tokens"] == sum(len(t.split()) for t in texts)
    assert {c["finish_reason"] for c in data["choices"]} == {"stop"}
    stats = srv.stats()
    assert (stats["received"], stats["answered"], stats["choices"]) == (1, 1, 3)
    assert stats["output_tokens"] == data["usage"]["completion_tokens"]


async def test_max_tokens_truncates_by_words_and_stop_sequences_cut(serve, http):
    srv = await serve()
    _, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body(max_tokens=5))
    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["message"]["content"].split()) == 5
    _, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body(stop=["Step 2"]))
    data = json.loads(raw)
    assert "Step 2" not in data["choices"][0]["message"]["content"]
    assert data["choices"][0]["finish_reason"] == "stop"


async def test_known_questions_get_their_answer_and_wrong_rate_flips_it(serve, http):
    srv = await serve(answers={"What is  6 times 7?": "42"})
    _, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body("Solve: what is 6 TIMES 7?"))
    assert json.loads(raw)["choices"][0]["message"]["content"].endswith("#### 42")
    srv.control(wrong_rate=1.0)
    _, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body())
    assert json.loads(raw)["choices"][0]["message"]["content"].endswith("#### 43")


async def test_anthropic_messages_protocol(serve, http):
    srv = await serve()
    body = {
        "model": "claude-test",
        "system": "Be careful.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}],
        "max_tokens": 4,
    }
    status, _, raw = await post(http, srv.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    data = json.loads(raw)
    assert status == 200 and data["type"] == "message" and data["content"][0]["type"] == "text"
    assert data["stop_reason"] == "max_tokens" and data["usage"] == {"input_tokens": (11 + 12) // 4, "output_tokens": 4}
    # What the real API refuses, the server refuses too.
    bad_role = {**body, "messages": [{"role": "system", "content": "x"}, *body["messages"]]}
    for bad, headers in [
        (bad_role, ANTHROPIC_HEADERS),
        ({**body, "temperature": 1.0}, ANTHROPIC_HEADERS),
        ({k: v for k, v in body.items() if k != "max_tokens"}, ANTHROPIC_HEADERS),
        (body, {}),  # no anthropic-version
    ]:
        status, _, raw = await post(http, srv.url + "/v1/messages", bad, headers)
        assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error", bad
    assert srv.stats()["bad_requests"] == 4
    # The older API version still takes sampling parameters.
    status, _, _ = await post(http, srv.url + "/v1/messages", {**body, "temperature": 0.5}, {"anthropic-version": "2023-06-01"})
    assert status == 200


async def test_replies_are_deterministic_per_seed(serve, http):
    a, b = await serve(seed=3), await serve(seed=3)
    outs = []
    for srv in (a, b):
        replies = []
        for i in range(3):
            _, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body(f"q{i}"))
            replies.append(json.loads(raw)["choices"][0]["message"]["content"])
        outs.append(replies)
    assert outs[0] == outs[1]


async def test_sliding_window_request_limit_is_enforced(serve, http):
    srv = await serve(rpm=600, window_s=1.0, rate_headers="window")  # 10 per 1-second window
    results = await asyncio.gather(*[post(http, srv.url + "/v1/chat/completions", chat_body()) for _ in range(25)])
    ok = [r for r in results if r[0] == 200]
    limited = [r for r in results if r[0] == 429]
    assert len(ok) == 10 and len(limited) == 15
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for _, h, _ in ok) == list(range(10))
    for _, h, raw in limited:
        assert h["x-ratelimit-limit-requests"] == "10" and h["x-ratelimit-remaining-requests"] == "0"
        assert h["retry-after"] == "1" and 0 < int(h["retry-after-ms"]) <= 1000
        assert h["x-ratelimit-reset-requests"].endswith("s")
        assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    assert srv.stats()["rate_limited"] == 15
    # Waiting what the server said is always enough.
    wait_ms = max(int(h["retry-after-ms"]) for _, h, _ in limited)
    await asyncio.sleep(wait_ms / 1000 + 0.01)
    status, _, _ = await post(http, srv.url + "/v1/chat/completions", chat_body())
    assert status == 200


async def test_token_limit_counts_prompt_plus_max_tokens_at_arrival(serve, http):
    srv = await serve(tpm=6000, window_s=1.0, rate_headers="window")  # 100 tokens per window
    body = chat_body("x" * 40, max_tokens=40)  # 10 prompt + 40 = 50 tokens
    s1, h1, _ = await post(http, srv.url + "/v1/chat/completions", body)
    s2, h2, _ = await post(http, srv.url + "/v1/chat/completions", body)
    s3, h3, _ = await post(http, srv.url + "/v1/chat/completions", body)
    assert (s1, s2, s3) == (200, 200, 429)
    assert (h1["x-ratelimit-remaining-tokens"], h2["x-ratelimit-remaining-tokens"]) == ("50", "0")
    assert h3["x-ratelimit-limit-tokens"] == "100" and "retry-after" in h3
    status, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body(max_tokens=500))
    assert status == 400 and b"too large" in raw  # could never fit: not worth retrying


async def test_a_request_over_the_token_limit_is_openais_unkind_429(serve, http):
    srv = await serve(tpm=6000, window_s=1.0)  # OpenAI's header style: it says so with a 429, not a 400
    status, h, raw = await post(http, srv.url + "/v1/chat/completions", chat_body(max_tokens=500))
    err = json.loads(raw)["error"]
    assert status == 429 and err["type"] == "tokens" and err["code"] == "rate_limit_exceeded"
    assert err["message"].startswith("Request too large for ") and "Limit 100, Requested 5" in err["message"]
    assert srv.stats()["bad_requests"] == 1 and srv.stats()["rate_limited"] == 0


async def test_anthropic_rate_limit_error_shape_and_headers(serve, http):
    srv = await serve(rpm=60, window_s=1.0)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    assert (await post(http, srv.url + "/v1/messages", body, ANTHROPIC_HEADERS))[0] == 200
    status, h, raw = await post(http, srv.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert status == 429
    assert json.loads(raw) == {"type": "error", "error": {"type": "rate_limit_error", "message": json.loads(raw)["error"]["message"]}}
    assert h["anthropic-ratelimit-requests-remaining"] == "0" and h["anthropic-ratelimit-requests-reset"].endswith("Z")


@pytest.mark.parametrize("code", [500, 503])
async def test_injected_errors_in_each_protocol_shape(serve, http, code):
    srv = await serve(error_rate=1.0, error_codes=(code,))
    status, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body())
    assert status == code and json.loads(raw)["error"]["type"] == "server_error"
    status, _, raw = await post(http, srv.url + "/v1/messages", chat_body(), ANTHROPIC_HEADERS)
    assert status == code and json.loads(raw)["type"] == "error"
    assert srv.stats()["errors"] == 2 and srv.stats()["answered"] == 0


async def test_fault_sequence_is_reproducible_from_the_seed(serve, http):
    runs = []
    for _ in range(2):
        srv = await serve(seed=11, error_rate=0.3, malformed_rate=0.2)
        runs.append([(await post(http, srv.url + "/v1/chat/completions", chat_body()))[0] for _ in range(30)])
    assert runs[0] == runs[1] and {200, 500, 503} <= set(runs[0])


async def test_fault_counts_are_reproducible_under_concurrency(serve, http):
    # Requests in flight together must not interleave their random draws (the no-usage and
    # malformed-body choices once came after the delay): the k-th request to arrive gets the same
    # fate whatever the timing, so a run of 60 requests meets the same faults sent together or one
    # at a time.
    config = dict(seed=5, malformed_rate=0.15, no_usage_rate=0.2, drop_rate=0.1, latency_ms=5, jitter_ms=5,
                  slow_rate=0.3, slow_s=0.02)

    async def one(url: str) -> None:
        try:
            await post(http, url, chat_body())
        except aiohttp.ClientError:
            pass  # a dropped connection

    runs = []
    for together in (False, True, True, True):
        srv = await serve(**config)
        url = srv.url + "/v1/chat/completions"
        if together:
            await asyncio.gather(*(one(url) for _ in range(60)))
        else:
            for _ in range(60):
                await one(url)
        stats = srv.stats()
        runs.append({k: stats[k] for k in ("answered", "malformed", "dropped")})
    assert runs[0]["malformed"] and runs[0]["dropped"] and runs[0]["answered"]
    assert all(r == runs[0] for r in runs), runs


async def test_drop_closes_the_connection_without_an_answer(serve, http):
    srv = await serve(drop_rate=1.0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, srv.url + "/v1/chat/completions", chat_body())
    stats = srv.stats(log=True)
    assert stats["dropped"] == 1 and stats["answered"] == 0
    assert stats["log"][-1]["outcome"] == "dropped" and stats["log"][-1]["sha"]


async def test_malformed_bodies_are_200_and_unusable(serve, http):
    srv = await serve(malformed_rate=1.0)
    for _ in range(6):
        status, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body())
        assert status == 200
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        assert not isinstance(data.get("choices"), list)
    assert srv.stats()["malformed"] == 6


async def test_hang_holds_requests_until_released(serve, http):
    srv = await serve(hang=True)
    pending = asyncio.create_task(post(http, srv.url + "/v1/chat/completions", chat_body()))
    await asyncio.sleep(0.2)
    assert not pending.done() and srv.stats()["hung"] == 1 and srv.stats()["in_flight"] == 1
    srv.control(hang=False)
    status, _, _ = await asyncio.wait_for(pending, 2)
    assert status == 200


async def test_stop_closes_hung_requests(http):
    srv = TeacherServer(ServerConfig(hang=True))
    await srv.start()
    pending = asyncio.create_task(post(http, srv.url + "/v1/chat/completions", chat_body()))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await srv.stop()
    assert time.monotonic() - t0 < 2
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(pending, 2)


async def test_slow_and_latency(serve, http):
    srv = await serve(latency_ms=60, jitter_ms=20)
    t0 = time.monotonic()
    await post(http, srv.url + "/v1/chat/completions", chat_body())
    assert 0.035 < time.monotonic() - t0 < 1.0
    srv.control(latency_ms=0, jitter_ms=0, slow_rate=1.0, slow_s=0.25)
    t0 = time.monotonic()
    await post(http, srv.url + "/v1/chat/completions", chat_body())
    assert time.monotonic() - t0 >= 0.25


async def test_api_key_is_checked_for_both_protocols(serve, http):
    srv = await serve(require_api_key="sk-right")
    status, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body(), {"Authorization": "Bearer sk-wrong"})
    assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
    status, _, _ = await post(http, srv.url + "/v1/chat/completions", chat_body(), {"Authorization": "Bearer sk-right"})
    assert status == 200
    status, _, raw = await post(http, srv.url + "/v1/messages", chat_body(), {**ANTHROPIC_HEADERS, "x-api-key": "nope"})
    assert status == 401 and json.loads(raw)["error"]["type"] == "authentication_error"
    status, _, _ = await post(http, srv.url + "/v1/messages", chat_body(), {**ANTHROPIC_HEADERS, "Authorization": "Bearer sk-right"})
    assert status == 200
    async with http.get(srv.url + "/v1/models") as r:
        assert r.status == 401
    assert srv.stats()["auth_failed"] == 2


async def test_max_requests_then_quota_errors(serve, http):
    srv = await serve(max_requests=2)
    statuses = [(await post(http, srv.url + "/v1/chat/completions", chat_body()))[0] for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    _, _, raw = await post(http, srv.url + "/v1/chat/completions", chat_body())
    assert json.loads(raw)["error"]["code"] == "insufficient_quota"
    assert srv.stats()["exhausted"] == 3 and srv.stats()["answered"] == 2


async def test_http_control_stats_and_reset(serve, http):
    srv = await serve()
    await post(http, srv.url + "/v1/chat/completions", chat_body())
    async with http.post(srv.url + "/control", json={"error_rate": 1.0, "error_codes": [502]}) as r:
        assert r.status == 200 and (await r.json())["error_codes"] == [502]
    assert (await post(http, srv.url + "/v1/chat/completions", chat_body()))[0] == 502
    async with http.post(srv.url + "/control", json={"no_such_knob": 1}) as r:
        assert r.status == 400 and "no_such_knob" in (await r.json())["error"]
    async with http.post(srv.url + "/control", json={"error_rate": 2}) as r:
        assert r.status == 400 and "error_rate" in (await r.json())["error"]
    async with http.get(srv.url + "/stats?log=1") as r:
        stats = await r.json()
    assert stats["received"] == 2 and [e["status"] for e in stats["log"]] == [200, 502]
    async with http.post(srv.url + "/reset") as r:
        assert (await r.json())["received"] == 0
    async with http.get(srv.url + "/v1/models") as r:
        assert (await r.json())["data"][0]["id"] == "test-teacher"


def test_run_in_thread_for_sync_tests():
    with run_in_thread(ServerConfig(rpm=60, window_s=1.0)) as srv:
        req = urllib.request.Request(
            srv.url + "/v1/chat/completions", data=json.dumps(chat_body()).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req) as r:
            assert r.status == 200 and r.headers["x-ratelimit-remaining-requests"] == "0"
        srv.control(error_rate=1.0, error_codes=(500,))
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req)
        assert info.value.code == 429  # the window still holds the first request
        srv.reset()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req)
        assert info.value.code == 500
        assert srv.stats()["errors"] == 1 and srv.stats()["received"] == 1


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_cli_subprocess_prints_url_and_writes_stats(tmp_path):
    stats_file = tmp_path / "stats.json"
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question": "What is 6 times 7?", "answer": "42"}) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "synthledger.testing.server", "--port", "0", "--rpm", "120", "--window-s", "1",
         "--answers", str(answers), "--stats-file", str(stats_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert int(url.rsplit(":", 1)[1]) > 0
        req = urllib.request.Request(
            url + "/v1/chat/completions", data=json.dumps(chat_body()).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req) as r:
            assert json.loads(r.read())["choices"][0]["message"]["content"].endswith("#### 42")
        with urllib.request.urlopen(req):
            pass
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(req)  # third in one second: 429
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the periodic writer catches up within ~0.5 s
            if stats_file.exists() and _read_json(stats_file)["received"] == 3:
                break
            time.sleep(0.05)
        periodic = _read_json(stats_file)
        assert (periodic["answered"], periodic["rate_limited"]) == (2, 1) and periodic["url"] == url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        final = _read_json(stats_file)
        assert final["received"] == 3 and [e["status"] for e in final["log"]] == [200, 200, 429]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_settings():
    out = subprocess.run(
        [sys.executable, "-m", "synthledger.testing.server", "--error-rate", "1.5"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "error_rate" in out.stderr


def test_cli_on_a_port_already_taken_is_one_line_and_exit_2():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "synthledger.testing.server", "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use", r.stderr
