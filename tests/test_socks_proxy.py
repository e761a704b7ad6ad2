"""A teacher behind a SOCKS5 proxy (ALL_PROXY=socks5://... from `ssh -D` or a desktop proxy client):
QA found every run refused at start-up. Through a real SOCKS5 server (testing/socks5_server.py):
socks5h:// sends the host name, socks5:// what it resolves to; the proxy URL's user name and password
go in the proxy's own login and nowhere else (not to the teacher, not to the store); and a login or a
connection the proxy refuses is one line saying so."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from synthledger.plugins.teachers.env_proxy import env_proxy
from synthledger.plugins.teachers.http1 import ConnectFailed, Http1Client
from synthledger.testing.cli_runs import CLI, env as cli_env
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread
from synthledger.testing.socks5_server import Socks5Server, socks5_in_thread
from synthledger.testing.teacher_calls import ask_once


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


@pytest.fixture
def server():
    with run_in_thread() as srv:  # (its own loop, in a thread: the client under test has this one)
        yield srv


async def _proxy(**options) -> Socks5Server:
    proxy = Socks5Server(**options)
    await proxy.start()
    return proxy


@pytest.mark.parametrize("scheme, kind, host", [("socks5h", 3, "localhost"), ("socks5", 1, "127.0.0.1")])
async def test_a_teacher_is_reached_through_all_proxy_socks5(monkeypatch, server, scheme, kind, host):
    proxy = await _proxy()
    try:
        monkeypatch.setenv("ALL_PROXY", proxy.url(scheme))
        port = int(server.url.rsplit(":", 1)[1])
        assert await ask_once(f"http://localhost:{port}/v1")
        assert server.stats()["received"] == 1
        assert proxy.seen.offered == [b"\x00"] and proxy.seen.addresses == [(kind, host, port)]
    finally:
        await proxy.stop()


async def test_the_proxy_login_goes_to_the_proxy_alone(monkeypatch, server):
    proxy = await _proxy(login=("alice", "s0cksPass"))
    try:
        monkeypatch.setenv("ALL_PROXY", proxy.url("socks5h", "alice:s0cksPass"))
        assert env_proxy(server.url)[0] == proxy.url("socks5h")  # shown without its credentials
        assert await ask_once(server.url + "/v1")
        assert proxy.seen.offered == [b"\x00\x02"] and proxy.seen.logins == [("alice", "s0cksPass")]
        sent = proxy.seen.first_bytes[0]
        assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and b"proxy-authorization" not in sent.lower()
    finally:
        await proxy.stop()


@pytest.mark.parametrize("options, userinfo, message", [
    ({"login": ("alice", "right")}, "alice:wrong", "the SOCKS proxy refused the user name and password in its URL"),
    ({"login": ("alice", "right")}, "", "the SOCKS proxy accepts none of the login methods offered (it may want "
                                        "a user name and password in the proxy's URL)"),
    ({"reply": 2}, "", "the SOCKS proxy could not connect to localhost:9: connection not allowed by the proxy's rules"),
])
async def test_what_the_proxy_refuses_is_said_in_one_line_and_nothing_is_sent(monkeypatch, options, userinfo, message):
    proxy = await _proxy(**options)
    try:
        monkeypatch.setenv("ALL_PROXY", proxy.url("socks5h", userinfo))
        url = "http://localhost:9/v1/chat/completions"
        bare, headers = env_proxy(url)
        client = Http1Client(url, {}, connect_timeout=5, read_timeout=5, proxy=bare, proxy_headers=headers)
        with pytest.raises(ConnectFailed) as caught:
            await client.post(b"{}")
        assert str(caught.value) == message and caught.value.maybe_sent is False
        await client.aclose()
    finally:
        await proxy.stop()


def test_a_whole_run_through_a_socks5_proxy_with_a_login_keeps_its_password_out_of_the_store(tmp_path):
    """The user's way: ALL_PROXY in the environment, `generate`, then `audit`."""
    with run_in_thread() as teacher, socks5_in_thread(login=("bob", "Pr0xyS3cret")) as proxy:
        config = write_project(tmp_path, teacher.url, queries=6)
        env = {**cli_env(), "ALL_PROXY": proxy.url("socks5h", "bob:Pr0xyS3cret")}
        done = subprocess.run([sys.executable, CLI, "generate", "--config", str(config), "--no-progress"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert teacher.stats()["received"] == 6 and len(proxy.seen.logins) >= 1
    run_id = done.stdout.split()[1]
    audit = subprocess.run([sys.executable, CLI, "audit", run_id, "--json"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert json.loads(audit.stdout)["ok"] is True
    store = next(tmp_path.rglob("*.db"))
    rows = sqlite3.connect(store).execute("SELECT payload FROM events").fetchall()
    assert rows and not any("Pr0xyS3cret" in payload for (payload,) in rows)
    assert "Pr0xyS3cret" not in done.stdout + done.stderr
