"""The test server's rate-limit headers in each style, `n` usage and prompt-cache usage fields,
checked over HTTP and through the official SDKs."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import aiohttp
import anthropic
import openai
import pytest

from synthledger.engine.teacher import parse_reset
from synthledger.testing.server import ServerConfig, TeacherServer, go_duration

ANTHROPIC_HEADERS = {"anthropic-version": "2026-10-21"}


def chat_body(content: str = "What is 6 times 7?", **kw):
    return {"model": "test-teacher", "messages": [{"role": "user", "content": content}], "max_tokens": 50, **kw}


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
        return r.status, r.headers.copy(), await r.read()


def test_go_durations_as_openai_sends_them():
    assert [go_duration(s) for s in (0, 0.12, 0.0004, 1, 8.64, 59.9996, 60, 360, 90.5, 3600, 3725)] == [
        "0s", "120ms", "0s", "1s", "8.64s", "1m0s", "1m0s", "6m0s", "1m30.5s", "1h0m0s", "1h2m5s"]
    for s in ("120ms", "1s", "6m0s", "1m30.5s", "1h2m5s"):
        assert go_duration(parse_reset(s)) == s


async def test_openai_style_429_has_whole_second_retry_after_only(serve, http):
    srv = await serve(rpm=600, window_s=1.0)  # 10 per second, announced per minute
    results = await asyncio.gather(*[post(http, srv.url + "/v1/chat/completions", chat_body()) for _ in range(14)])
    ok = [h for s, h, _ in results if s == 200]
    limited = [(h, raw) for s, h, raw in results if s == 429]
    assert len(ok) == 10 and len(limited) == 4
    assert {h["x-ratelimit-limit-requests"] for h in ok} == {"600"}
    # Remaining is in the limit's unit (per minute): 10 per second used up means none remain.
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in ok) == [60 * i for i in range(10)]
    for h, raw in limited:
        assert h["retry-after"] == "1" and "retry-after-ms" not in h
        assert h["x-ratelimit-remaining-requests"] == "0"
        reset = h["x-ratelimit-reset-requests"]
        assert reset.endswith("ms") or reset in ("1s",), reset  # a Go duration, e.g. "998ms"
        assert 0 < parse_reset(reset) <= 1.0
        assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"


async def test_kind_style_adds_the_exact_wait(serve, http):
    srv = await serve(rpm=600, window_s=1.0, rate_headers="kind")
    results = await asyncio.gather(*[post(http, srv.url + "/v1/chat/completions", chat_body()) for _ in range(12)])
    limited = [h for s, h, _ in results if s == 429]
    assert len(limited) == 2
    for h in limited:
        assert h["retry-after"] == "1" and 0 < int(h["retry-after-ms"]) <= 1000
        assert h["x-ratelimit-limit-requests"] == "600"
    await asyncio.sleep(max(int(h["retry-after-ms"]) for h in limited) / 1000 + 0.01)
    assert (await post(http, srv.url + "/v1/chat/completions", chat_body()))[0] == 200


async def test_none_style_announces_nothing_and_429s_say_only_whole_seconds(serve, http):
    srv = await serve(rpm=600, window_s=1.0, rate_headers="none")
    results = await asyncio.gather(*[post(http, srv.url + "/v1/chat/completions", chat_body()) for _ in range(12)])
    assert sorted(s for s, _, _ in results) == [200] * 10 + [429] * 2
    for status, h, _ in results:
        assert not [k for k in h if "ratelimit" in k.lower()], h
        assert "retry-after-ms" not in h and (h.get("retry-after") == "1") == (status == 429)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    _, h, _ = await post(http, srv.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert not [k for k in h if "ratelimit" in k.lower()], h


async def test_long_windows_announce_minute_resets(serve, http):
    srv = await serve(rpm=60, tpm=100_000, window_s=360.0)
    _, h, _ = await post(http, srv.url + "/v1/chat/completions", chat_body())
    assert h["x-ratelimit-limit-requests"] == "60" and h["x-ratelimit-remaining-requests"] == "59"
    assert h["x-ratelimit-reset-requests"] in ("6m0s", "5m59.999s", "5m59.998s")
    assert h["x-ratelimit-limit-tokens"] == "100000"


async def test_anthropic_headers_only_anthropic_names(serve, http):
    srv = await serve(rpm=120, tpm=60_000, window_s=1.0)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    s1, h1, _ = await post(http, srv.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    s2, h2, _ = await post(http, srv.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    s3, h3, _ = await post(http, srv.url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert (s1, s2, s3) == (200, 200, 429)
    assert not [k for k in h1 if k.lower().startswith("x-ratelimit")]
    assert h1["anthropic-ratelimit-requests-limit"] == "120" and h1["anthropic-ratelimit-requests-remaining"] == "60"
    # A combined token limit is none of Anthropic's split ones: only `tokens-*` says it.
    assert h1["anthropic-ratelimit-tokens-limit"] == "60000" and "anthropic-ratelimit-input-tokens-limit" not in h1
    reset = datetime.fromisoformat(h3["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
    assert 0 < (reset - datetime.now(timezone.utc)).total_seconds() <= 1.0
    assert h3["retry-after"] == "1" and "retry-after-ms" not in h3


async def test_n_usage_counts_the_prompt_once(serve):
    srv = await serve()
    client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
    one = await client.chat.completions.create(model="test-teacher", messages=chat_body()["messages"], max_tokens=40)
    many = await client.chat.completions.create(model="test-teacher", messages=chat_body()["messages"],
                                                max_tokens=40, n=5)
    await client.close()
    assert len(many.choices) == 5 and [c.index for c in many.choices] == list(range(5))
    assert many.usage.prompt_tokens == one.usage.prompt_tokens  # paid once for all five
    assert many.usage.completion_tokens == sum(len(c.message.content.split()) for c in many.choices)
    assert srv.stats()["answered"] == 2 and srv.stats()["choices"] == 6


async def test_prompt_cache_fields_in_both_protocols(serve):
    srv = await serve(prompt_cache=True, cache_min_tokens=256)
    long = "Consider this long context. " * 60  # ~420 prompt tokens
    client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
    msgs = [{"role": "user", "content": long}]
    first = await client.chat.completions.create(model="test-teacher", messages=msgs, max_tokens=10)
    again = await client.chat.completions.create(model="test-teacher", messages=msgs, max_tokens=10)
    await client.close()
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached % 128 == 0 and cached <= again.usage.prompt_tokens == first.usage.prompt_tokens
    ac = anthropic.AsyncAnthropic(base_url=srv.url, api_key="k", max_retries=0)
    a1 = await ac.messages.create(model="m", messages=msgs, max_tokens=10)
    a2 = await ac.messages.create(model="m", messages=msgs, max_tokens=10)
    await ac.close()
    assert a1.usage.cache_read_input_tokens == 0
    # Anthropic reports cache reads beside input_tokens, not inside.
    assert a2.usage.cache_read_input_tokens > 0
    assert a2.usage.input_tokens + a2.usage.cache_read_input_tokens == a1.usage.input_tokens
    assert srv.stats()["cached_tokens"] == cached + a2.usage.cache_read_input_tokens


async def test_short_prompts_are_never_cached(serve):
    srv = await serve(prompt_cache=True)
    client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)
    for _ in range(2):
        r = await client.chat.completions.create(model="test-teacher", messages=chat_body()["messages"], max_tokens=5)
    await client.close()
    assert r.usage.prompt_tokens_details.cached_tokens == 0  # below OpenAI's 1024-token minimum


def test_bad_header_style_is_refused():
    with pytest.raises(ValueError, match="rate_headers"):
        ServerConfig(rate_headers="nice")


async def test_output_tokens_are_charged_at_max_tokens_then_at_what_was_written(serve):
    # 600 output tokens a minute over a 1 s window: 10 per window. max_tokens 8 fits once; the
    # reply (a few words, cut at 8) is charged what it wrote, so a second request fits after it.
    srv = await serve(otpm=600, itpm=60_000, window_s=1.0)
    client = anthropic.AsyncAnthropic(base_url=srv.url, api_key="k", max_retries=0)
    raw = await client.messages.with_raw_response.create(
        model="test-teacher", max_tokens=8, messages=[{"role": "user", "content": "What is 2 plus 2?"}])
    h, msg = raw.headers, await raw.parse()
    assert h["anthropic-ratelimit-output-tokens-limit"] == "600"
    assert h["anthropic-ratelimit-input-tokens-limit"] == "60000"
    # `tokens-*` repeats the limit with fewer tokens left: the output one (600 x 60 / 60 - 8 charged).
    assert h["anthropic-ratelimit-tokens-limit"] == "600"
    assert int(h["anthropic-ratelimit-output-tokens-remaining"]) == (10 - 8) * 60
    written = msg.usage.output_tokens
    assert written <= 8
    with pytest.raises(anthropic.RateLimitError) as refused:  # 8 + 8 > 10 were it still charged at the cap
        await client.messages.create(model="test-teacher", max_tokens=10 - written + 1,
                                     messages=[{"role": "user", "content": "What is 3 plus 3?"}])
    assert refused.value.response.headers["retry-after"] == "1"
    ok = await client.messages.create(model="test-teacher", max_tokens=10 - written,
                                      messages=[{"role": "user", "content": "What is 4 plus 4?"}])
    assert ok.usage.output_tokens <= 10 - written
    await client.close()
