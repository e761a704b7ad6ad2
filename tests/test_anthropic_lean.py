"""The `anthropic` provider's online calls over our own HTTP client (`anthropic_http`), not the SDK.

Importing the official SDK cost every run with an Anthropic teacher seconds of start-up; a run that
is not in batch mode must not import it at all. What the SDK path did is the specification here:
the same request (headers, body, URL) and, for every outcome the test server can produce, the same
classified failure (kind, status, maybe_billed, retry_after, body excerpt, rate limits), checked
against the SDK itself driven the way the provider used to drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from synthledger.engine.api import ChatRequest, Completion, FailureKind, TeacherError
from synthledger.plugins import teachers as teachers_plugin
from synthledger.plugins.teachers.anthropic_messages import _extract, message_params
from synthledger.plugins.teachers.errors import malformed, rate_limits
from synthledger.plugins.teachers.settings import TeacherSettings
from synthledger.testing.cli_runs import CLI, Project, Server, env, last_line
from synthledger.testing.server import ServerConfig, TeacherServer

MESSAGES = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"})


def request(**kw) -> ChatRequest:
    return ChatRequest(**{"model": "test-teacher", "messages": MESSAGES, "max_tokens": 50, **kw})


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


# ---- no SDK at start-up ------------------------------------------------------------------------


def test_a_non_batch_generate_never_imports_the_sdk(tmp_path):
    """A whole `generate` run (the real CLI, its own process) with an anthropic teacher: answered,
    and `anthropic` is not among the modules it loaded. Batch mode is what still imports it."""
    srv = Server()
    try:
        proj = Project(tmp_path, srv.url, 3)
        cfg = proj.write(teacher={"provider": "anthropic", "base_url": srv.url}, budget={"queries": 3})
        seen = tmp_path / "modules.json"
        code = textwrap.dedent(f"""
            import atexit, json, runpy, sys
            atexit.register(lambda: open({str(seen)!r}, "w").write(json.dumps(sorted(sys.modules))))
            sys.argv = [{CLI!r}, "generate", "--config", {str(cfg)!r}, "--no-progress"]
            runpy.run_path({CLI!r}, run_name="__main__")
        """)
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        assert last_line(res)[1] == "budget_exhausted" and srv.stats()["answered"] == 3, res.stdout
    finally:
        srv.close()
    modules = set(json.loads(seen.read_text()))
    assert not {m for m in modules if m == "anthropic" or m.startswith("anthropic.")}
    assert "synthledger.plugins.teachers.anthropic_messages" in modules  # (the provider did run here)


def test_the_factory_and_a_call_import_no_sdk_and_batch_mode_does():
    code = textwrap.dedent("""
        import asyncio, os, sys
        os.environ["ANTHROPIC_API_KEY"] = "sk-ant-test"
        from synthledger.engine.api import ChatRequest
        from synthledger.plugins import teachers
        from synthledger.testing.server import ServerConfig, TeacherServer

        async def main():
            async with TeacherServer(ServerConfig()) as srv:
                t = teachers.anthropic_factory({"provider": "anthropic", "model": "test-teacher", "base_url": srv.url})
                req = ChatRequest(model="test-teacher", messages=({"role": "user", "content": "hi"},), max_tokens=20)
                out = await t.complete(req)
                await t.aclose()
            assert out.texts[0] and t.batch_api is None
            assert "anthropic" not in sys.modules, "the online path imported the SDK"
            b = teachers.anthropic_factory({"provider": "anthropic", "model": "m", "base_url": srv.url, "batch": True})
            assert type(b.batch_api).__name__ == "AnthropicBatchAPI" and "anthropic" in sys.modules
            await b.aclose()

        asyncio.run(main())
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- the same request as the SDK's ------------------------------------------------------------


class Capture:
    """A server that records each request (path, headers, body) and answers one fixed message."""

    REPLY = json.dumps({"type": "message", "model": "claude-x", "content": [{"type": "text", "text": "4"}],
                        "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}).encode()

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head[1:] if ln)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.seen.append((head[0].split()[1], headers, body))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(self.REPLY), self.REPLY))
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> str:
        self._srv = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._srv.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self._srv.close()


async def sdk_complete(sdk, req: ChatRequest) -> Completion:
    """The provider's online call as it was over the SDK (the specification the lean client meets)."""
    kwargs = message_params(req)
    if req.timeout_s is not None:
        kwargs["timeout"] = req.timeout_s
    raw = await sdk._call(sdk._client.messages.with_raw_response.create, **kwargs)
    try:
        completion = _extract(await raw.parse())
    except Exception as exc:
        body = None
        with contextlib.suppress(Exception):
            body = await raw.read()
        raise malformed(f"{type(exc).__name__}: {exc}", raw.status_code, body, raw.headers) from exc
    completion.rate_limits = rate_limits(raw.headers)
    return completion


def sdk_teacher(settings: TeacherSettings):
    from synthledger.plugins.teachers.anthropic_sdk import AnthropicSdk

    return AnthropicSdk(settings)


SENT = ("authorization", "anthropic-version", "content-type", "accept", "x-team", "x-gateway-key", "x-from-env")


async def test_the_request_is_the_one_the_sdk_sends(monkeypatch):
    """Headers (key, API version, the config's and the environment's extra headers), URL and body
    as the installed SDK sends them; ANTHROPIC_BASE_URL is honoured when base_url is unset, as it was."""
    import anthropic._constants

    from synthledger.plugins.teachers.anthropic_http import API_VERSION

    assert API_VERSION == anthropic._constants.ANTHROPIC_API_VERSION  # pinned SDK moved: update it
    monkeypatch.setenv("GW_KEY", "gw-secret-123")
    monkeypatch.setenv("ANTHROPIC_CUSTOM_HEADERS", "x-from-env: yes")
    req = request(stop=("\n\n",), max_tokens=77)
    capture = Capture()
    async with capture as url:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", url + "/gw/")
        settings = TeacherSettings(provider="anthropic", model="test-teacher", extra_headers={"x-team": "ml"},
                                   extra_headers_env={"x-gateway-key": "GW_KEY"})
        lean, sdk = teachers_plugin.anthropic_factory(settings), sdk_teacher(settings)
        try:
            assert lean.url == str(sdk._client.base_url).rstrip("/") == url + "/gw"
            out = await lean.complete(req)
            await sdk_complete(sdk, req)
        finally:
            await lean.aclose()
            await sdk.aclose()
    (lean_path, lean_h, lean_body), (sdk_path, sdk_h, sdk_body) = capture.seen
    assert lean_path == sdk_path == "/gw/v1/messages"
    assert {k: lean_h.get(k) for k in SENT} == {k: sdk_h.get(k) for k in SENT}
    assert lean_h["authorization"] == "Bearer sk-ant-test" and lean_h["x-gateway-key"] == "gw-secret-123"
    assert json.loads(lean_body) == json.loads(sdk_body) == {
        "model": "test-teacher", "max_tokens": 77, "system": "Be brief.", "stop_sequences": ["\n\n"],
        "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    assert out.texts == ["4"] and out.raw_model == "claude-x"


def test_extract_reads_a_json_object_as_it_reads_the_sdks_message():
    data = {"model": "c", "stop_reason": "max_tokens",
            "content": [{"type": "text", "text": "a"}, {"type": "thinking", "thinking": "x"},
                        {"type": "text", "text": "b"}],
            "usage": {"input_tokens": 10, "output_tokens": 4, "cache_creation_input_tokens": 5,
                      "cache_read_input_tokens": 7}}
    sdk_like = SimpleNamespace(**{**data, "content": [SimpleNamespace(**b) for b in data["content"]],
                                  "usage": SimpleNamespace(**data["usage"])})
    for parsed in (data, sdk_like):
        out = _extract(parsed)
        assert out.texts == ["ab"] and out.finish_reasons == ["length"] and out.raw_model == "c"
        assert (out.usage.input_tokens, out.usage.output_tokens, out.usage.cached_input_tokens) == (22, 4, 7)
    for broken in ({**data, "usage": {"input_tokens": 1}}, {**data, "content": None}, [], None,
                   {**data, "usage": {"input_tokens": -1, "output_tokens": 1}}):
        with pytest.raises((ValueError, TypeError)):
            _extract(broken)


# ---- the same failures as the SDK path --------------------------------------------------------


def outcome(result: Completion | BaseException) -> dict:
    """What the engine acts on. Message wording is the transport's own and not compared; replies'
    texts and token counts are not either (the server draws them from the request's bytes)."""
    if isinstance(result, TeacherError):
        rl = vars(result.rate_limits) if result.rate_limits is not None else {}
        return {"kind": result.kind, "status": result.status, "billed": result.maybe_billed,
                # (an exact wait, from retry-after-ms, is only as alike as the two calls' timing)
                "retry_after": result.retry_after and math.ceil(result.retry_after), "exact": result.retry_after_exact,
                "excerpt": (result.body_excerpt or "")[:60],
                "limits": {k: v for k, v in rl.items() if k.startswith("limit")}}
    if isinstance(result, BaseException):
        return {"raised": type(result).__name__}
    return {"answered": result.finish_reasons, "model": result.raw_model,
            "limits": {k: v for k, v in vars(result.rate_limits).items() if k.startswith("limit")}
            if result.rate_limits is not None else {}}


async def outcomes(client: str, server: dict, settings: dict, reqs: list[ChatRequest]) -> list[dict]:
    async with TeacherServer(ServerConfig(**server)) as srv:
        s = TeacherSettings(provider="anthropic", model="test-teacher", base_url=srv.url, **settings)
        t = teachers_plugin.anthropic_factory(s) if client == "lean" else sdk_teacher(s)
        call = t.complete if client == "lean" else (lambda r: sdk_complete(t, r))
        out = []
        try:
            for r in reqs:
                try:
                    out.append(outcome(await call(r)))
                except Exception as exc:
                    out.append(outcome(exc))
        finally:
            await t.aclose()
        return out


SCENARIOS = {
    # 429s: a whole-second retry-after with anthropic-ratelimit-* headers, the exact retry-after-ms,
    # Anthropic's split input/output limits, and a quota that no wait clears.
    "429 retry-after": ({"rpm": 60, "window_s": 1}, {}, [request(), request()]),  # (one request a second)
    "429 retry-after-ms": ({"rpm": 60, "window_s": 1, "rate_headers": "kind"}, {}, [request(), request()]),
    "429 split limits": ({"itpm": 60_000, "otpm": 600, "window_s": 60}, {}, [request(max_tokens=500)] * 3),
    "429 quota": ({"max_requests": 0}, {}, [request()]),
    "529 overloaded": ({"error_rate": 1.0, "error_codes": (529,)}, {}, [request()]),
    "500 and 503": ({"error_rate": 1.0, "error_codes": (500, 503), "seed": 3}, {}, [request()] * 4),
    "504 maybe billed": ({"error_rate": 1.0, "error_codes": (504,)}, {}, [request()]),
    "413 too large": ({"error_rate": 1.0, "error_codes": (413,)}, {}, [request()]),
    "400 over the token limit": ({"tpm": 100, "window_s": 60}, {}, [request(max_tokens=200)]),
    "400 max_tokens": ({}, {}, [request(max_tokens=1_000_000)]),
    "404 no such model": ({"strict_models": True}, {}, [request(model="claude-nope")]),
    "401 wrong key": ({"require_api_key": "sk-other"}, {}, [request()]),
    "malformed bodies": ({"malformed_rate": 1.0, "seed": 5}, {}, [request()] * 6),
    "no usage": ({"no_usage_rate": 1.0}, {}, [request()]),
    "timeout": ({"hang": True}, {"timeout_s": 0.3}, [request()]),
    "a retry's longer timeout": ({"hang": True}, {"timeout_s": 30}, [request(timeout_s=0.3)]),
    "dropped": ({"drop_rate": 1.0}, {}, [request()]),
    "n above one": ({}, {}, [request(n=2)]),
    "answered": ({"rpm": 600, "window_s": 60, "rate_headers": "window"}, {}, [request(), request(max_tokens=3)]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_each_failure_is_classified_as_the_sdk_path_classified_it(name):
    server, settings, reqs = SCENARIOS[name]
    lean = await outcomes("lean", server, settings, reqs)
    assert lean == await outcomes("sdk", server, settings, reqs)
    assert lean  # (and a few of them spelt out, so an agreement on something wrong cannot pass)
    if name == "429 retry-after":
        assert lean[1]["kind"] is FailureKind.RATE_LIMITED and lean[1]["retry_after"] >= 1 and not lean[1]["exact"]
        assert lean[1]["limits"]["limit_requests"] == 60  # (per minute, as Anthropic says it)
    if name == "529 overloaded":
        assert lean[0]["kind"] is FailureKind.SERVER_ERROR and lean[0]["status"] == 529 and not lean[0]["billed"]
        assert "overloaded_error" in lean[0]["excerpt"]
    if name == "malformed bodies":
        assert {o["kind"] for o in lean} == {FailureKind.MALFORMED} and all(o["billed"] for o in lean)
        assert len({o["excerpt"][:10] for o in lean}) == 3
    if name in ("timeout", "a retry's longer timeout"):
        assert lean == [outcome(TeacherError(FailureKind.TIMEOUT, "", maybe_billed=True))]


async def test_a_refused_connection_is_not_billed_and_the_client_recovers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = teachers_plugin.anthropic_factory(TeacherSettings(provider="anthropic", model="test-teacher",
                                                          base_url=f"http://127.0.0.1:{port}", timeout_s=2))
    with pytest.raises(TeacherError) as info:
        await t.complete(request())
    await t.aclose()
    assert info.value.kind is FailureKind.CONNECTION and not info.value.maybe_billed
    async with TeacherServer(ServerConfig(malformed_rate=1.0)) as srv:  # after a broken body, the next call works
        t = teachers_plugin.anthropic_factory(TeacherSettings(provider="anthropic", model="test-teacher",
                                                              base_url=srv.url))
        with pytest.raises(TeacherError):
            await t.complete(request())
        srv.control(malformed_rate=0.0)
        assert (await t.complete(request())).texts[0]
        await t.aclose()


def test_faults_under_one_budget_are_charged_once_each(tmp_path):
    """As test_sdk_provider_faults, for this provider: broken 200s, 200s without usage, responses
    slower than the timeout and dropped connections at once; each may have been billed and is
    charged in full, what was answered is settled exactly once, the budget spent to the query."""
    from synthledger.testing.projects import write_project
    from synthledger.testing.reliability import ServerProcess, check_run_exact, fork_cli, run_events

    budget = 40
    with ServerProcess("--malformed-rate", "0.08", "--no-usage-rate", "0.08", "--drop-rate", "0.08",
                       "--slow-rate", "0.06", "--slow-s", "3", "--latency-ms", "10", "--seed", "7") as server:
        config = write_project(tmp_path, server.url, seeds=8, queries=budget, extra=(
            "\n[limits]\nmax_concurrency = 8\nbackoff_base_s = 0.01\nbackoff_max_s = 0.05\nbreaker_threshold = 50\n"))
        config.write_text(config.read_text().replace('provider = "openai-compatible"', 'provider = "anthropic"\n'
                                                     'timeout_s = 1.0').replace(f"{server.url}/v1", server.url))
        store = f"sqlite:///{tmp_path / 'store.db'}"
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store", store], cwd=tmp_path,
                       env={"ANTHROPIC_API_KEY": "sk-test-not-checked"})
        stats = server.settled_stats()
    assert res.rc == 0 and res.last_line()[2] == "budget_exhausted", res
    counts = check_run_exact(store, res.last_line()[1], budget)["report"].counts
    assert stats["malformed"] > 0 and stats["dropped"] > 0 and stats["client_gone"] > 0, stats
    assert counts["lost"] == stats["malformed"] + stats["dropped"] + stats["client_gone"], (counts, stats)
    assert counts["settled"] == stats["answered"] and counts["settled"] + counts["lost"] == budget
    failures = [p for _, t, p, _ in run_events(tmp_path / "store.db") if t == "attempt_failed"]
    assert any("usage" in p["message"] for p in failures) and any(p["kind"] == "timeout" for p in failures)


def test_values_from_anthropic_custom_headers_are_secrets(monkeypatch):
    """A gateway token given in ANTHROPIC_CUSTOM_HEADERS is scrubbed like the API key: a provider that
    echoed it back in an error was printed and stored (QA), where one in extra_headers_env was not."""
    from synthledger.engine.redact import scrub

    monkeypatch.setenv("ANTHROPIC_CUSTOM_HEADERS", "x-gateway-token: gwenvsecretZZZZ98765\nx-team: research")
    settings = TeacherSettings(provider="anthropic", model="test-teacher", base_url="http://127.0.0.1:9")
    teachers_plugin.anthropic_factory(settings)
    assert "gwenvsecretZZZZ98765" not in scrub("401: invalid x-gateway-token gwenvsecretZZZZ98765")
    assert scrub("a research question") == "a research question"  # (no credential: data stays whole)
