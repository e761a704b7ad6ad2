"""The HTTP teacher providers, driven through their real SDKs against the real test server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pydantic
import pytest

from synthledger.engine.host import PluginHost
from synthledger.engine.api import ChatRequest, FailureKind, Teacher, TeacherError, utf8_prompt_bound
from synthledger.plugins import teachers as teachers_plugin
from synthledger.plugins.teachers.errors import rate_limits, status_error
from synthledger.plugins.teachers.settings import MissingApiKey, TeacherSettings
from synthledger.testing.server import ServerConfig, TeacherServer

PROVIDERS = ["openai", "anthropic", "openai-compatible"]
FACTORIES = {
    "openai": teachers_plugin.openai_factory,
    "anthropic": teachers_plugin.anthropic_factory,
    "openai-compatible": teachers_plugin.openai_compatible_factory,
}
QUESTION = "A farmer has 17 sheep and buys 25 more. How many sheep are there now?"
MESSAGES = ({"role": "system", "content": "Reason step by step, then give the final answer."}, {"role": "user", "content": QUESTION})


def request(n: int = 1, max_tokens: int = 200, messages=MESSAGES, model: str = "test-teacher") -> ChatRequest:
    return ChatRequest(model=model, messages=messages, max_tokens=max_tokens, n=n)


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


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
async def teacher():
    made = []

    def make(provider: str, url: str, **kw) -> Teacher:
        base = url if provider == "anthropic" else url + "/v1"
        t = FACTORIES[provider](TeacherSettings(provider=provider, model="test-teacher", base_url=base, **kw))
        made.append(t)
        return t

    yield make
    for t in made:
        await t.aclose()


async def failure(t: Teacher, req: ChatRequest | None = None) -> TeacherError:
    with pytest.raises(TeacherError) as info:
        await t.complete(req or request())
    return info.value


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_success_content_usage_and_bound(serve, teacher, provider):
    srv = await serve(answers={QUESTION: "42"})
    t = teacher(provider, srv.url)
    assert isinstance(t, Teacher) and t.provider == provider
    out = await t.complete(request())
    assert len(out.texts) == 1 and out.texts[0].endswith("#### 42")
    assert out.finish_reasons == ["stop"]
    stats = srv.stats()
    assert stats["answered"] == 1
    assert (out.usage.input_tokens, out.usage.output_tokens) == (stats["input_tokens"], stats["output_tokens"])
    assert out.usage.output_tokens == len(out.texts[0].split())
    # The system message reached the model (as `system` for Anthropic: the server refuses the role).
    assert out.usage.input_tokens == sum(len(m["content"].encode()) for m in MESSAGES) // 4
    assert t.prompt_tokens_upper_bound(request()) == utf8_prompt_bound(MESSAGES) > out.usage.input_tokens
    assert out.rate_limits is None  # the server sends no limit headers when it has no limits


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_truncation_is_reported_as_length(serve, teacher, provider):
    srv = await serve()
    out = await teacher(provider, srv.url).complete(request(max_tokens=3))
    assert out.finish_reasons == ["length"] and out.usage.output_tokens == 3


@pytest.mark.parametrize("provider", ["openai", "openai-compatible"])
async def test_n_samples_in_one_request(serve, teacher, provider):
    srv = await serve()
    out = await teacher(provider, srv.url).complete(request(n=4))
    assert len(out.texts) == 4 and len(set(out.texts)) == 4
    assert out.usage.output_tokens == sum(len(t.split()) for t in out.texts)
    assert srv.stats()["received"] == 1 and srv.stats()["choices"] == 4


async def test_anthropic_refuses_n_above_one(serve, teacher):
    srv = await serve()
    with pytest.raises(ValueError, match="n=2"):
        await teacher("anthropic", srv.url).complete(request(n=2))
    assert srv.stats()["received"] == 0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limit_maps_retry_after_and_headers(serve, teacher, provider):
    srv = await serve(rpm=120, window_s=0.5, rate_headers="window")  # one request per half second
    t = teacher(provider, srv.url)
    ok = await t.complete(request())
    assert ok.rate_limits.limit_requests == 1 and ok.rate_limits.remaining_requests == 0
    assert 0.45 <= ok.rate_limits.reset_requests_s <= 0.5
    await asyncio.sleep(0.15)
    err = await failure(t)
    assert err.kind is FailureKind.RATE_LIMITED and err.kind.retryable and err.status == 429
    assert not err.maybe_billed
    assert 0.2 < err.retry_after < 0.4  # from retry-after-ms: the whole-second header says 1
    assert err.rate_limits.limit_requests == 1 and err.rate_limits.remaining_requests == 0
    await asyncio.sleep(err.retry_after + 0.01)
    await t.complete(request())
    assert srv.stats()["rate_limited"] == 1 and srv.stats()["answered"] == 2


@pytest.mark.parametrize("provider", ["openai", "openai-compatible"])
async def test_openais_request_too_large_429_is_not_a_rate_limit(serve, teacher, provider):
    """OpenAI answers a request with more tokens than its per-minute limit with a 429 that no wait
    clears ("Request too large ... The input or output tokens must be reduced")."""
    srv = await serve(tpm=6000, window_s=1.0)
    err = await failure(teacher(provider, srv.url), request(max_tokens=500))
    assert err.kind is FailureKind.TOO_LARGE and not err.kind.retryable and err.status == 429
    assert "Request too large" in err.message and not err.maybe_billed
    assert status_error(429, "Rate limit reached for requests", {}, None).kind is FailureKind.RATE_LIMITED


def test_more_bytes_than_an_endpoint_takes_is_too_large_not_a_bad_request():
    # Anthropic's 413 request_too_large and OpenAI's 400 "File is too large." (a batch input file
    # over 200 MB): the same request never goes through, but a smaller batch does (batch_room.py).
    for err in (status_error(413, "Request exceeds the maximum allowed number of bytes.", {}, None),
                status_error(400, "File is too large.", {}, None)):
        assert err.kind is FailureKind.TOO_LARGE and not err.kind.retryable and not err.maybe_billed
    assert status_error(400, "Invalid value for 'messages'", {}, None).kind is FailureKind.BAD_REQUEST


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_garbled_rate_headers_are_ignored_not_obeyed(serve, teacher, provider):
    """A sloppy gateway's `retry-after: inf`, `x-ratelimit-reset-requests: 1.2.3s` or a limit of
    `1e400` is no wait and no limit: the answer it came with is kept (it was paid for), and a 429
    carries no wait, rather than one no sleep would end."""
    srv = await serve(rpm=120, window_s=0.5, rate_headers="kind", garbled_headers=True)
    t = teacher(provider, srv.url)
    ok = await t.complete(request())
    assert ok.texts and ok.usage.output_tokens > 0
    if ok.rate_limits is not None:
        assert all(v is None for v in vars(ok.rate_limits).values()), ok.rate_limits
    err = await failure(t)
    assert err.kind is FailureKind.RATE_LIMITED and err.status == 429
    assert err.retry_after is None and not err.retry_after_exact
    assert srv.stats()["answered"] == 1 and srv.stats()["rate_limited"] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("code", "kind", "billed"),
    [
        (500, FailureKind.SERVER_ERROR, False),
        (503, FailureKind.SERVER_ERROR, False),
        (504, FailureKind.SERVER_ERROR, True),  # a gateway gave up: the model may have run
        (401, FailureKind.AUTH, False),
        (404, FailureKind.BAD_REQUEST, False),
        (422, FailureKind.BAD_REQUEST, False),
    ],
)
async def test_status_codes_map_to_kinds(serve, teacher, provider, code, kind, billed):
    srv = await serve(error_rate=1.0, error_codes=(code,))
    err = await failure(teacher(provider, srv.url))
    assert (err.kind, err.maybe_billed, err.status) == (kind, billed, code)
    assert err.body_excerpt and "error" in err.body_excerpt


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_wrong_key_is_auth_and_not_retryable(serve, teacher, provider):
    srv = await serve(require_api_key="sk-the-real-one")
    err = await failure(teacher(provider, srv.url))
    assert err.kind is FailureKind.AUTH and not err.kind.retryable and err.status == 401
    assert srv.stats()["auth_failed"] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_right_key_from_custom_env_var(serve, teacher, provider, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-the-real-one")
    srv = await serve(require_api_key="sk-the-real-one")
    out = await teacher(provider, srv.url, api_key_env="MY_TEACHER_KEY").complete(request())
    assert out.texts


async def test_server_side_bad_request(serve, teacher):
    srv = await serve()
    for provider in PROVIDERS:
        err = await failure(teacher(provider, srv.url), request(model=""))
        assert err.kind is FailureKind.BAD_REQUEST and err.status == 400 and "model" in err.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_dropped_connection_may_have_been_billed(serve, teacher, provider):
    srv = await serve(drop_rate=1.0)
    err = await failure(teacher(provider, srv.url))
    assert err.kind is FailureKind.CONNECTION and err.maybe_billed
    assert srv.stats()["dropped"] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_refused_connection_was_not_billed(teacher, provider):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    err = await failure(teacher(provider, f"http://127.0.0.1:{port}"))
    assert err.kind is FailureKind.CONNECTION and not err.maybe_billed


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("login", ["", "bob:proxy-pass-0123456789@"])
async def test_the_proxy_the_environment_names_is_used_by_every_provider(serve, provider, login, monkeypatch):
    """Behind a company proxy (HTTP_PROXY), the SDK providers reached the teacher and openai-compatible
    could not: aiohttp ignores the environment unless told. The test server answers a proxied request
    (an absolute URL) as a proxy would pass it on; the host in base_url does not even resolve."""
    from synthledger.engine.redact import known_secrets

    srv = await serve()
    monkeypatch.setenv("HTTP_PROXY", srv.url.replace("http://", f"http://{login}"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    base = "http://teacher.invalid:9" + ("" if provider == "anthropic" else "/v1")
    t = FACTORIES[provider](TeacherSettings(provider=provider, model="test-teacher", base_url=base))
    try:
        out = await t.complete(request())
    finally:
        await t.aclose()
    assert out.texts and srv.stats()["received"] == 1
    if login and provider == "openai-compatible":
        assert "proxy-pass-0123456789" in known_secrets()  # never written anywhere


async def test_no_proxy_keeps_a_local_teacher_off_the_proxy(serve, teacher, monkeypatch):
    srv = await serve()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    out = await teacher("openai-compatible", srv.url).complete(request())
    assert out.texts and srv.stats()["received"] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_malformed_bodies_never_crash(serve, teacher, provider):
    srv = await serve(malformed_rate=1.0, seed=5)
    t = teacher(provider, srv.url)
    excerpts = set()
    for _ in range(8):  # enough draws to hit each of the server's three kinds of broken body
        err = await failure(t)
        assert err.kind is FailureKind.MALFORMED and err.maybe_billed and err.status == 200
        excerpts.add(err.body_excerpt[:10])
    assert len(excerpts) == 3
    srv.control(malformed_rate=0.0)
    assert (await t.complete(request())).texts  # the client is still usable


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_hang_becomes_a_billed_timeout(serve, teacher, provider):
    srv = await serve(hang=True)
    t = teacher(provider, srv.url, timeout_s=0.3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    err = await failure(t)
    assert err.kind is FailureKind.TIMEOUT and err.maybe_billed
    assert 0.25 < loop.time() - t0 < 2.0
    assert srv.stats()["hung"] == 1


async def test_compatible_client_is_concurrent_and_bounded(serve, teacher):
    srv = await serve(latency_ms=20)
    t = teacher("openai-compatible", srv.url, max_connections=8)
    reqs = [request(messages=({"role": "user", "content": f"question {i}"},)) for i in range(64)]
    peak = 0

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, srv.stats()["in_flight"])
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    outs = await asyncio.gather(*[t.complete(r) for r in reqs])
    watcher.cancel()
    assert len(outs) == 64 and srv.stats()["answered"] == 64
    assert 4 <= peak <= 8  # concurrent, but never more than max_connections at once


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    for provider, var in [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"),
                          ("openai-compatible", "OPENAI_API_KEY")]:
        settings = TeacherSettings(provider=provider, model="m", base_url="https://api.example.com/v1")
        with pytest.raises(MissingApiKey, match=var):
            FACTORIES[provider](settings)
    with pytest.raises(MissingApiKey, match="CUSTOM_VAR"):
        FACTORIES["openai"](TeacherSettings(provider="openai", model="m", api_key_env="CUSTOM_VAR"))
    # A server on this machine may run keyless, whichever provider (SDK or not) talks to it (issue 14).
    for provider in ("openai-compatible", "openai", "anthropic"):
        for url in ("http://localhost:8000/v1", "http://127.0.0.1:8000/v1"):
            local = TeacherSettings(provider=provider, model="m", base_url=url)
            assert FACTORIES[provider](local).provider == provider


def test_settings_validation():
    s = TeacherSettings(provider="openai", model="gpt-x")
    assert (s.max_tokens, s.temperature, s.top_p, s.timeout_s, s.max_connections) == (256, 0.7, None, 60, None)
    with pytest.raises(pydantic.ValidationError, match="max_tokenz"):
        TeacherSettings(provider="openai", model="m", max_tokenz=5)
    with pytest.raises(pydantic.ValidationError, match="timeout_s"):
        TeacherSettings(provider="openai", model="m", timeout_s=0)
    with pytest.raises(pydantic.ValidationError, match="base_url"):
        TeacherSettings(provider="openai", model="m", base_url="localhost:8000/v1")
    with pytest.raises(ValueError, match="base_url"):
        FACTORIES["openai-compatible"](TeacherSettings(provider="openai-compatible", model="m"))
    # Factories also take the raw TOML table.
    assert FACTORIES["openai"]({"provider": "openai", "model": "m"}).provider == "openai"


def test_status_table_and_anthropic_rate_headers():
    assert status_error(408, "x", {}, None).kind is FailureKind.TIMEOUT
    assert status_error(409, "x", {}, None).kind is FailureKind.SERVER_ERROR
    assert status_error(529, "overloaded", {"retry-after": "7"}, None).retry_after == 7.0
    info = rate_limits({
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2999-01-01T00:00:00Z",
    })
    assert (info.limit_requests, info.remaining_requests) == (50, 49) and info.reset_requests_s > 1e9
    assert rate_limits({"content-type": "application/json"}) is None


def test_plugin_registers_all_providers_lazily():
    host = PluginHost()
    host.add(teachers_plugin, "teachers", "synthledger", "test")
    assert host.names("teachers") == ["anthropic", "local", "openai", "openai-compatible"]
    assert host.get("teachers", "local") is teachers_plugin.lazy_local_factory
    code = (
        "import sys, synthledger.plugins.teachers\n"
        "heavy = {'openai', 'anthropic', 'torch', 'transformers', 'aiohttp'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
