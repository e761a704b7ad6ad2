"""A user name and password in ANTHROPIC_BASE_URL (a gateway with HTTP Basic auth in front of the
model: https://user:pw@gateway) go as Basic auth, as the SDK's httpx sends them. QA: the lean client
dropped them, and the gateway answered every request 401. (A config's base_url may hold no credential:
the config is recorded with the run. The variable is not recorded when it holds one.) The password
is a secret like a key."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys

import pytest

from synthledger.engine.api import ChatRequest, FailureKind, TeacherError
from synthledger.plugins import teachers as teachers_plugin
from synthledger.plugins.teachers.json_post import with_url_login
from synthledger.plugins.teachers.settings import TeacherSettings
from synthledger.testing.cli_runs import CLI, env
from synthledger.testing.projects import write_project
from synthledger.testing.server import ServerConfig, run_in_thread

LOGIN = "gw user:gw:pa ss"  # (a space and a colon: they travel percent-encoded in the URL)
IN_URL = "gw%20user:gw%3Apa%20ss"


@pytest.fixture
def gateway():
    with run_in_thread(ServerConfig(require_basic=LOGIN)) as srv:
        yield srv


def _with_login(url: str, userinfo: str = IN_URL) -> str:
    return url.replace("http://", f"http://{userinfo}@")


async def _ask() -> str:
    teacher = teachers_plugin.anthropic_factory(TeacherSettings(provider="anthropic", model="test-teacher"))
    try:
        out = await teacher.complete(ChatRequest(model="test-teacher", messages=({"role": "user", "content": "q"},),
                                                 max_tokens=8))
    finally:
        await teacher.aclose()
    return out.texts[0]


async def test_the_login_in_anthropic_base_url_passes_the_gateway(monkeypatch, gateway):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", _with_login(gateway.url))
    assert await _ask()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", gateway.url)
    with pytest.raises(TeacherError) as refused:  # without it: the gateway's 401, as before
        await _ask()
    assert refused.value.kind is FailureKind.AUTH
    assert gateway.stats()["auth_failed"] == 1


def test_the_login_replaces_an_authorization_header_as_httpx_does():
    url, headers = with_url_login("https://al%40ice:p%3Aw@gw.example:8443/v1?x=1", {"authorization": "Bearer k", "X": "y"})
    assert url == "https://gw.example:8443/v1?x=1"
    assert headers == {"X": "y", "Authorization": "Basic " + base64.b64encode(b"al@ice:p:w").decode()}
    assert with_url_login("http://h/v1", {"a": "b"}) == ("http://h/v1", {"a": "b"})


def test_a_whole_run_through_the_gateway_keeps_its_password_out_of_the_store(tmp_path, gateway):
    config = write_project(tmp_path, gateway.url, queries=4)
    text = config.read_text().replace('provider = "openai-compatible"', 'provider = "anthropic"')
    config.write_text("\n".join(line for line in text.splitlines() if not line.startswith("base_url")) + "\n")
    run_env = {**env(), "ANTHROPIC_BASE_URL": _with_login(gateway.url)}
    done = subprocess.run([sys.executable, CLI, "generate", "--config", str(config), "--no-progress"], cwd=tmp_path,
                          env=run_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert gateway.stats()["received"] == 4 and gateway.stats()["auth_failed"] == 0
    run_id = done.stdout.split()[1]
    audit = subprocess.run([sys.executable, CLI, "audit", run_id, "--json"], cwd=tmp_path, env=run_env,
                           capture_output=True, text=True, timeout=60)
    assert json.loads(audit.stdout)["ok"] is True
    store = next(tmp_path.rglob("*.db"))
    con = sqlite3.connect(store)
    recorded = " ".join([p for (p,) in con.execute("SELECT payload FROM events")]
                        + [c for (c,) in con.execute("SELECT config FROM runs")])
    assert "gw%3Apa%20ss" not in recorded and "gw:pa ss" not in recorded
    assert "pa%20ss" not in done.stdout + done.stderr
