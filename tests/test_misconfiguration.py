"""A run that is set up wrong stops at the first sign of it, in the same words whatever the provider:
a model the endpoint does not serve, a base_url where nothing listens. The official SDKs are driven
against the real test server, on 127.0.0.1, with no API key set (a local server needs none)."""

from __future__ import annotations

import socket
import time

import pytest

from synthledger.engine.run.config import config_from_dict
from synthledger.engine.run.progress import RunProgress
from synthledger.engine.ledger.ledger import BudgetSpec, Ledger
from synthledger.engine.run.launch import generate
from synthledger.engine.teacher import ChatRequest, FailureKind, TeacherError
from synthledger.plugins import teachers as teachers_plugin
from synthledger.plugins.teachers.settings import TeacherSettings
from synthledger.store.eventstore import EventStore
from synthledger.testing.server import run_in_thread

PROVIDERS = ["openai-compatible", "openai", "anthropic"]


@pytest.fixture(autouse=True)
def no_keys(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


def base_url(provider: str, url: str) -> str:
    return url if provider == "anthropic" else url + "/v1"


def run_config(tmp_path, provider: str, url: str, model: str = "test-teacher") -> dict:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(f'{{"question": "Ann has {i} pens and buys 2. How many?", "answer": "#### {i + 2}"}}\n'
                             for i in range(4)))
    return {
        "run": {"name": f"wrong-{provider}"},
        "seeds": {"source": "jsonl", "path": str(seeds)},
        "teacher": {"provider": provider, "base_url": base_url(provider, url), "model": model, "max_tokens": 64},
        # One request at a time, so "stopped at the first" is a count, not a race.
        "limits": {"max_concurrency": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
        "budget": {"queries": 8},
        "strategy": {"name": "answer_augmentation"},
    }


def failed_attempts(store: EventStore, run_id: str) -> list[dict]:
    """The failed attempts that went out. The next item's attempt may have been recorded as
    dispatched while the first failure was being judged; the stop then cancels it before its send,
    and its record says so (not billed): it never reached the provider."""
    failed = [e.payload for e in store.iter_events(run_id, types=["attempt_failed"])]
    unsent = [a for a in failed if a["message"].startswith("not sent:")]
    assert all(a["maybe_billed"] is False for a in unsent), unsent
    return [a for a in failed if a not in unsent]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_model_stops_the_run_at_the_first_answer_naming_model_and_endpoint(tmp_path, provider):
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread(strict_models=True) as srv:
        cfg = config_from_dict(run_config(tmp_path, provider, srv.url, model="no-such-model"))
        result = generate(cfg, store, show_progress=False)
        received = srv.stats()["received"]
    expected = (f"the teacher endpoint {base_url(provider, srv.url)} has no model 'no-such-model' (HTTP 404); "
                "set [teacher] model to a model it serves")
    assert result.status == "failed" and result.message == expected  # the same words for every provider
    assert received == 1 and len(failed_attempts(store, result.run_id)) == 1
    assert [a["kind"] for a in failed_attempts(store, result.run_id)] == ["model_not_found"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_nothing_listening_stops_the_run_at_once_naming_the_url(tmp_path, provider):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    result = generate(config_from_dict(run_config(tmp_path, provider, url)), store, show_progress=False)
    assert result.status == "failed"
    assert result.message.startswith(f"cannot connect to the teacher endpoint {base_url(provider, url)} (")
    assert result.message.endswith("is the server running, and is [teacher] base_url right?")
    attempts = failed_attempts(store, result.run_id)
    assert len(attempts) == 1 and attempts[0]["kind"] == "connection" and attempts[0]["maybe_billed"] is False


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
def test_a_base_url_the_client_cannot_use_is_a_config_error_of_its_section(tmp_path, provider, monkeypatch):
    """QA: `teacher 'anthropic' factory raised ValueError at json_post.py:38 in __init__: [teacher] base_url
    is not a usable URL: 'http://127.0.0.1:99999/v1/messages'`, read as a plugin's crash, naming a URL
    the user never wrote. It is the section's config error, naming what the config gave."""
    from synthledger.engine.errors import ConfigError

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-key")
    cfg = run_config(tmp_path, provider, "http://127.0.0.1:99999")
    cfg["teacher"]["base_url"] = "http://127.0.0.1:99999"
    with pytest.raises(ConfigError) as caught:
        generate(config_from_dict(cfg), EventStore(f"sqlite:///{tmp_path / 's.db'}"), show_progress=False)
    assert str(caught.value) == ("[teacher] base_url is not a usable URL: 'http://127.0.0.1:99999': "
                                 "Port out of range 0-65535")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unreachable_proxy_is_named_not_taken_for_a_wrong_base_url(tmp_path, provider, monkeypatch):
    # QA: HTTP_PROXY pointing where nothing listens, the teacher up: "is the server running, and is
    # [teacher] base_url right?", the proxy unmentioned. Its password must not be shown.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://alice:Pr0xyPassw0rdZZ@127.0.0.1:{port}")
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread() as srv:
        result = generate(config_from_dict(run_config(tmp_path, provider, srv.url)), store, show_progress=False)
    assert result.status == "failed"
    assert f"through the proxy http://127.0.0.1:{port} that the environment names" in result.message, result.message
    assert result.message.endswith("is the proxy up (HTTPS_PROXY / HTTP_PROXY), or should the host be in NO_PROXY?")
    assert "Pr0xyPassw0rdZZ" not in result.message and "alice" not in result.message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_base_url_with_no_chat_api_at_its_path_stops_the_run_at_the_first_naming_base_url(tmp_path, provider):
    """A missing or doubled /v1 answers HTTP 404 to every request, before any answer: not five
    "invalid requests" that never say where to look, but one line naming the URL and the key."""
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread() as srv:
        data = run_config(tmp_path, provider, srv.url)
        wrong = srv.url + "/v1" if provider == "anthropic" else srv.url + "/v2"  # .../v1/v1/messages, .../v2/chat/...
        data["teacher"]["base_url"] = wrong
        result = generate(config_from_dict(data), store, show_progress=False)
    assert result.status == "failed"
    assert result.message.startswith(f"the teacher endpoint {wrong} serves no API at that path (HTTP 404: ")
    assert result.message.endswith("is [teacher] base_url right (with or without /v1)?")
    assert "\n" not in result.message
    assert [a["status"] for a in failed_attempts(store, result.run_id)] == [404]  # stopped at the first


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_max_tokens_above_the_models_output_cap_stops_the_run_at_the_first_naming_max_tokens(tmp_path, provider):
    """Every real model caps its output (OpenAI: "max_tokens is too large: ... supports at most 16384
    completion tokens"; Anthropic: "max_tokens: N > M, which is the maximum ..."), and the test
    server does too. It took five refused requests, and the line never named [teacher] max_tokens."""
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread() as srv:
        data = run_config(tmp_path, provider, srv.url)
        data["teacher"]["max_tokens"] = 1_000_000
        result = generate(config_from_dict(data), store, show_progress=False)
    assert result.status == "failed" and "\n" not in result.message
    assert result.message.startswith(f"the teacher endpoint {base_url(provider, srv.url)} refuses this run's "
                                     "max_tokens (")
    assert "16384" in result.message  # the provider's own words say what the cap is
    assert result.message.endswith("lower [teacher] max_tokens to what model 'test-teacher' allows")
    assert [a["status"] for a in failed_attempts(store, result.run_id)] == [400]  # stopped at the first


@pytest.mark.parametrize("provider", ["openai-compatible", "openai"])
def test_a_request_larger_than_the_token_limit_stops_the_run_at_the_first(tmp_path, provider):
    """OpenAI refuses a request with more tokens than its per-minute limit with a 429 that no wait
    clears; with max_tokens above the limit every query would, so the run stops at the first."""
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread(tpm=6000, window_s=1.0) as srv:  # 100 tokens a window; one request asks 64 + prompt
        data = run_config(tmp_path, provider, srv.url)
        data["teacher"]["max_tokens"] = 400
        result = generate(config_from_dict(data), store, show_progress=False)
        received = srv.stats()["received"]
    assert result.status == "failed" and received == 1
    assert result.message.startswith(f"the teacher endpoint {base_url(provider, srv.url)} refuses one request of "
                                     "this run as larger than its tokens-per-minute limit (")
    assert result.message.endswith("lower [teacher] max_tokens, or raise the limit with the provider")
    assert [a["kind"] for a in failed_attempts(store, result.run_id)] == ["too_large"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_sdk_errors_read_like_the_aiohttp_provider(provider):
    """The SDKs' own "Error code: 404 - {...}" becomes the provider's words after `HTTP 404:`."""
    from synthledger.testing.server import ServerConfig, TeacherServer

    srv = TeacherServer(ServerConfig(strict_models=True))
    await srv.start()
    teachers = {}
    try:
        for name in (provider, "openai-compatible"):
            if name == "openai-compatible" and provider == "anthropic":
                continue  # the aiohttp provider speaks OpenAI's protocol only
            settings = TeacherSettings(provider=name, model="x", base_url=base_url(name, srv.url))
            teachers[name] = getattr(teachers_plugin, f"{name.replace('-', '_')}_factory")(settings)
        errors = {}
        for name, teacher in teachers.items():
            request = ChatRequest(model="gpt-nope", messages=({"role": "user", "content": "hi"},), max_tokens=8)
            with pytest.raises(TeacherError) as info:
                await teacher.complete(request)
            errors[name] = info.value
    finally:
        for t in teachers.values():
            await t.aclose()
        await srv.stop()
    for err in errors.values():
        assert err.kind is FailureKind.MODEL_NOT_FOUND and err.status == 404
        assert err.message.startswith("HTTP 404: ") and "Error code" not in err.message and "gpt-nope" in err.message
    if provider == "openai":
        assert errors["openai"].message == errors["openai-compatible"].message


def test_the_live_view_shows_the_last_error_of_any_kind():
    progress = RunProgress(Ledger(BudgetSpec()), "run", enabled=False)
    assert "last error" not in progress.stats_line()
    progress.on_event(5, "attempt_failed", {"query_id": "q1", "attempt": 1, "kind": "server_error",
                                            "maybe_billed": False, "message": "HTTP 503: overloaded"})
    assert progress.stats_line().endswith("last error 0s ago: HTTP 503: overloaded")
    time.sleep(0.01)
    progress.on_event(6, "query_abandoned", {"query_id": "q1", "reason": "bad_request after 1 attempt(s): HTTP 400"})
    assert "last error 0s ago: query abandoned: bad_request after 1 attempt(s): HTTP 400" in progress.stats_line()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_nothing_listening_stops_a_batch_run_at_its_first_submission(tmp_path, provider):
    """Batch mode submits through other endpoints (files, batches), but a base_url where nothing
    listens is the same mistake with the same fix: one failed submission, then the run stops."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cfg = run_config(tmp_path, provider, url)
    cfg["teacher"].update(batch=True, batch_wait_s=0.05, batch_poll_s=0.05)
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    started = time.monotonic()
    result = generate(config_from_dict(cfg), store, show_progress=False)
    assert time.monotonic() - started < 30  # not max_attempts batches, each after a backoff
    assert result.status == "failed"
    assert result.message.startswith(f"cannot connect to the teacher endpoint {base_url(provider, url)} (")
    assert result.message.endswith("is the server running, and is [teacher] base_url right?")
    finished = [e.payload for e in store.iter_events(result.run_id, types=["batch_finished"])]
    assert [f["status"] for f in finished] == ["not_submitted"]  # one submission tried, none retried
    attempts = failed_attempts(store, result.run_id)
    assert attempts and {a["kind"] for a in attempts} == {"connection"}
    assert all(a["attempt"] == 1 and a["maybe_billed"] is False for a in attempts)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_base_url_with_no_api_at_its_path_stops_a_batch_run_at_its_first_submission(tmp_path, provider):
    """Batch mode uploads elsewhere (files, batches), but every 404 there is the same wrong base_url."""
    store = EventStore(f"sqlite:///{tmp_path / 's.db'}")
    with run_in_thread() as srv:
        cfg = run_config(tmp_path, provider, srv.url)
        wrong = srv.url + "/wrong"
        cfg["teacher"].update(base_url=wrong, batch=True, batch_wait_s=0.05, batch_poll_s=0.05)
        cfg["budget"] = {"queries": 30}  # answer augmentation has no end of its own
        result = generate(config_from_dict(cfg), store, show_progress=False)
    assert result.status == "failed"
    assert result.message.startswith(f"the teacher endpoint {wrong} serves no API at that path (HTTP 404: ")
    assert result.message.endswith("is [teacher] base_url right (with or without /v1)?")
    finished = [e.payload for e in store.iter_events(result.run_id, types=["batch_finished"])]
    assert len(finished) == 1  # one submission, not three refused batches in a row
    assert all(a["status"] == 404 for a in failed_attempts(store, result.run_id))


def test_a_407_from_a_plain_http_proxy_is_named_as_the_proxy_wanting_credentials(monkeypatch):
    """QA: a forwarding proxy's 407 read "the teacher refuses our requests as invalid (... HTTP 407)",
    the proxy unmentioned. Only a proxy says 407: it stops the run at the first, naming it."""
    from synthledger.engine.run.misconfig import misconfiguration
    from synthledger.plugins.teachers.errors import status_error

    monkeypatch.setenv("HTTP_PROXY", "http://alice:Pr0xyPassw0rdZZ@127.0.0.1:3128")
    err = status_error(407, "Proxy Authentication Required", {}, "")
    said = misconfiguration(err, role="teacher", section="teacher", model="m", url="http://10.1.2.3:8000/v1",
                            answered=5)
    assert said == ("the proxy http://127.0.0.1:3128 that HTTP_PROXY names wants credentials to reach the teacher "
                    "endpoint http://10.1.2.3:8000/v1 (HTTP 407 Proxy Authentication Required); give them in the "
                    "proxy's URL (http://user:password@host:port)")


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
def test_a_local_server_that_wants_a_key_when_none_was_set_says_none_was(tmp_path, provider):
    """No key set and a local base_url: a placeholder is sent (most local servers ignore keys). One
    that checks keys answered 401 and the run said only "rejected our credentials" (QA)."""
    import subprocess
    import sys

    from synthledger.testing.cli_runs import CLI, Project, Server, env

    srv = Server("--require-api-key", "sk-the-real-one")
    try:
        proj = Project(tmp_path, srv.url, 2)
        teacher = {"provider": provider, "base_url": base_url(provider, srv.url)}
        keyless = {k: v for k, v in env().items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
        res = subprocess.run([sys.executable, CLI, "generate", "--config", str(proj.write(teacher=teacher)),
                              "--no-progress"], cwd=tmp_path, env=keyless, capture_output=True, text=True, timeout=120)
    finally:
        srv.close()
    assert res.returncode == 1, res.stderr
    variable = "OPENAI_API_KEY" if provider == "openai-compatible" else "ANTHROPIC_API_KEY"
    assert (f"no API key was set ({variable} is unset), so a placeholder went to this local server; "
            f"set {variable}") in res.stderr, res.stderr
