"""The proxy the environment names, read as the SDKs' httpx reads it (QA): ALL_PROXY for any scheme
below the scheme's own variable, NO_PROXY's addresses and CIDR blocks matched against an IP host,
and a proxy the client cannot speak to refused at start-up with the variable it came from and the fix."""

from __future__ import annotations

import os
import socket

import pytest

from synthledger.engine.proxies import environment_proxy_source
from synthledger.plugins.teachers.env_proxy import env_proxy
from synthledger.plugins.teachers.openai_compatible import OpenAICompatibleTeacher
from synthledger.plugins.teachers.settings import TeacherSettings
from synthledger.testing.server import ServerConfig, TeacherServer
from synthledger.testing.teacher_calls import ask_once


@pytest.fixture(autouse=True)
def env(monkeypatch):
    """No proxy variable from the machine running the tests; `env(NAME=value)` sets some."""
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    def put(**names: str) -> None:
        for name, value in names.items():
            monkeypatch.setenv(name, value)

    return put


@pytest.fixture
async def server():
    srv = TeacherServer(ServerConfig())
    await srv.start()
    yield srv
    await srv.stop()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket closes


async def answered(base_url: str) -> bool:
    return bool(await ask_once(base_url))


def test_all_proxy_serves_every_scheme_below_the_schemes_own(env):
    env(ALL_PROXY="http://all.corp:3128")
    assert env_proxy("https://api.example.com/v1") == ("http://all.corp:3128", None)
    assert environment_proxy_source("http://api.example.com/v1") == ("ALL_PROXY", "http://all.corp:3128")
    env(HTTPS_PROXY="http://tls.corp:3128", all_proxy="all-lower.corp:8080")
    assert environment_proxy_source("https://api.example.com/v1") == ("HTTPS_PROXY", "http://tls.corp:3128")
    assert environment_proxy_source("http://api.example.com/v1") == ("all_proxy", "http://all-lower.corp:8080")
    env(NO_PROXY="example.com")
    assert env_proxy("http://api.example.com/v1") == (None, None)  # NO_PROXY holds for ALL_PROXY too


async def test_a_teacher_reaches_its_server_through_all_proxy(env, server):
    """The test server answers a proxied request (an absolute URL) as a proxy would pass it on; the
    host in base_url does not even resolve, so only the proxy can have answered."""
    env(ALL_PROXY=server.url)
    assert await answered("http://teacher.invalid:9/v1")
    assert server.stats()["received"] == 1


@pytest.mark.parametrize("host, no_proxy, bypassed", [
    ("127.0.0.2", "127.0.0.0/8", True),
    ("10.1.2.3", "localhost, 10.0.0.0/8", True),
    ("11.1.2.3", "10.0.0.0/8", False),
    ("[fd00::5]", "fd00::/8", True),
    ("[fd00::5]", "[fd00::]/8", True),
    ("[::1]", "::1", True),
    ("[::2]", "::1", False),
    ("192.168.1.7", "192.168.1.7/32", True),
    ("[::1]", "127.0.0.0/8", False),
    ("ten.example", "10.0.0.0/8", False),
    ("api.example.com", "example.com,*.nope", True),  # the standard library's suffix rule still holds
    ("api.example.com", "*", True),
])
def test_no_proxy_matches_an_ip_host_against_addresses_and_cidr_blocks(env, host, no_proxy, bypassed):
    env(HTTP_PROXY="http://proxy.corp:3128", NO_PROXY=no_proxy)
    assert (env_proxy(f"http://{host}:8000/v1") == (None, None)) is bypassed


async def test_a_cidr_block_in_no_proxy_keeps_a_local_teacher_off_the_proxy(env, server):
    env(HTTP_PROXY=f"http://127.0.0.1:{dead_port()}", no_proxy="10.0.0.0/8,127.0.0.0/8")
    assert await answered(server.url + "/v1") and server.stats()["received"] == 1


@pytest.mark.parametrize("name, proxy, message", [
    ("HTTPS_PROXY", "https://127.0.0.1:3129",
     "the proxy in HTTPS_PROXY ('https://127.0.0.1:3129') is https://, which is not supported: "
     "give it as http:// (a CONNECT tunnel still encrypts end to end)"),
    ("https_proxy", "https://bob:Pr0xyPassw0rd@proxy.corp:3129",
     "the proxy in https_proxy ('https://proxy.corp:3129') is https://, which is not supported: "
     "give it as http:// (a CONNECT tunnel still encrypts end to end)"),
    ("ALL_PROXY", "socks4://127.0.0.1:1080",
     "the proxy in ALL_PROXY ('socks4://127.0.0.1:1080') is socks4://, which is not supported: name an "
     "http:// or socks5:// proxy instead (https still goes encrypted end to end through either), or list the "
     "teacher's host in NO_PROXY"),
])
def test_a_proxy_the_client_cannot_speak_to_is_refused_naming_its_variable_and_the_fix(env, name, proxy, message):
    """QA: `proxy 'https://…': only http:// proxies are supported`, which named neither where the
    proxy came from nor what to do (and showed the proxy's password, had it one)."""
    env(**{name: proxy})
    with pytest.raises(ValueError) as caught:
        env_proxy("https://api.example.com/v1")
    assert str(caught.value) == message
    settings = TeacherSettings(provider="openai-compatible", model="m", base_url="https://api.example.com/v1")
    with pytest.raises(ValueError) as caught:
        OpenAICompatibleTeacher(settings)
    assert message in str(caught.value) and "Pr0xyPassw0rd" not in str(caught.value)
