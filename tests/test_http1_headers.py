"""What the lean client sends, compared with the SDKs' httpx (QA): one header of each name whatever
the case the user wrote it in (a user's Host replaces ours: two are a 400), a User-Agent, no framing
header of the user's, and a base_url's #fragment kept out of the path. Against a real server on
127.0.0.1 that records each request's head."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from synthledger import __version__
from synthledger.engine.api import ChatRequest
from synthledger.plugins.teachers.anthropic_http import AnthropicTeacher
from synthledger.plugins.teachers.http1 import ConnectFailed, Http1Client, endpoint_url
from synthledger.plugins.teachers.openai_compatible import OpenAICompatibleTeacher
from synthledger.plugins.teachers.settings import TeacherSettings

# One body both lean providers read as an answer.
ANSWER = orjson.dumps({
    "id": "x", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"},
                                          "finish_reason": "stop"}],
    "content": [{"type": "text", "text": "42"}], "stop_reason": "end_turn",
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "input_tokens": 3, "output_tokens": 1},
})
TEACHERS = {"openai-compatible": OpenAICompatibleTeacher, "anthropic": AnthropicTeacher}


class Recorder:
    """Answers every POST with ANSWER and keeps its head: (request line, [(name, value), ...])."""

    def __init__(self) -> None:
        self.heads: list[tuple[str, list[tuple[str, str]]]] = []

    async def __aenter__(self) -> "Recorder":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
                fields = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
                self.heads.append((lines[0], fields))
                await reader.readexactly(int(self.values("content-length")[0]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(ANSWER) + ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def values(self, name: str, request: int = -1) -> list[str]:
        """Every value the request sent under `name`, in any case."""
        return [v for n, v in self.heads[request][1] if n.lower() == name.lower()]


@pytest.fixture(autouse=True)
def no_environment_proxy(monkeypatch):
    import os

    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)


async def ask(provider: str, base_url: str, **settings) -> None:
    t = TEACHERS[provider](TeacherSettings(provider=provider, model="m", base_url=base_url, **settings))
    try:
        out = await t.complete(ChatRequest(model="m", messages=({"role": "user", "content": "q"},), max_tokens=8))
    finally:
        await t.aclose()
    assert out.texts == ["42"]


@pytest.mark.parametrize("provider", TEACHERS)
async def test_a_host_in_extra_headers_replaces_ours(provider):
    """QA: `extra_headers = {host = "..."}` (a gateway routing by Host) went out beside ours, and the
    server answered 400 to the two; httpx lets the user's replace the default."""
    async with Recorder() as srv:
        await ask(provider, srv.url, extra_headers={"host": "teacher.internal"})
        assert srv.values("Host") == ["teacher.internal"]


async def test_a_proxied_plain_request_carries_the_users_host_and_a_tunnel_keeps_the_targets():
    async with Recorder() as proxy:
        c = Http1Client("http://teacher.invalid:9/v1", {"HOST": "gw.internal"}, connect_timeout=2, read_timeout=2,
                        proxy=proxy.url, proxy_headers={"Proxy-Authorization": "Basic eA=="})
        await c.post(b"{}")
        await c.aclose()
        assert proxy.heads[0][0] == "POST http://teacher.invalid:9/v1 HTTP/1.1"
        assert proxy.values("host") == ["gw.internal"] and proxy.values("proxy-authorization") == ["Basic eA=="]

    connects: list[bytes] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connects.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    p = await asyncio.start_server(refuse, "127.0.0.1", 0)
    tunnelled = Http1Client("https://teacher.invalid/v1", {"Host": "gw.internal"}, connect_timeout=2,
                            read_timeout=2, proxy=f"http://127.0.0.1:{p.sockets[0].getsockname()[1]}")
    with pytest.raises(ConnectFailed, match="407"):
        await tunnelled.post(b"{}")
    p.close()
    assert connects[0].startswith(b"CONNECT teacher.invalid:443 HTTP/1.1\r\nHost: teacher.invalid:443\r\n")
    assert b"gw.internal" not in connects[0]


@pytest.mark.parametrize("provider", TEACHERS)
async def test_a_header_of_ours_given_in_another_case_is_sent_once(provider):
    """Names are case-insensitive: `accept`, `content-type`, `user-agent` or `accept-encoding` from
    the user replace ours rather than going out beside them."""
    given = {"accept": "application/json; q=1", "content-type": "application/json; charset=utf-8",
             "user-agent": "gateway-client/2", "accept-encoding": "identity"}
    async with Recorder() as srv:
        await ask(provider, srv.url, extra_headers=given)
        for name, value in given.items():
            assert srv.values(name) == [value], name


async def test_within_the_headers_given_the_last_of_a_name_wins():
    async with Recorder() as srv:
        c = Http1Client(srv.url + "/v1", {"X-Team": "a", "x-team": "b", "ACCEPT": "a", "Accept": "b"},
                        connect_timeout=2, read_timeout=2)
        await c.post(b"{}")
        await c.aclose()
        assert srv.values("x-team") == ["b"] and srv.values("accept") == ["b"]


@pytest.mark.parametrize("header", ["Content-Length", "transfer-encoding"])
@pytest.mark.parametrize("provider", TEACHERS)
def test_a_framing_header_in_extra_headers_is_refused_at_start_up(provider, header):
    """The client frames each body itself (Content-Length); a second framing header is a conflict
    the server answers with 400 on every request, so it is refused before any is sent."""
    settings = TeacherSettings(provider=provider, model="m", base_url="http://127.0.0.1:9",
                               extra_headers={header: "12"})
    with pytest.raises(ValueError, match=rf"header '{header}' cannot be set: the client frames"):
        TEACHERS[provider](settings)


@pytest.mark.parametrize("value", ["br", "gzip, br", "zstd;q=0.5", "*"])
@pytest.mark.parametrize("provider", TEACHERS)
def test_an_accept_encoding_the_client_cannot_decode_is_refused_at_start_up(provider, value):
    """QA: `Accept-Encoding: br` went out as given; a server that honoured it answered in brotli, and
    every paid answer failed to decode."""
    settings = TeacherSettings(provider=provider, model="m", base_url="http://127.0.0.1:9",
                               extra_headers={"Accept-Encoding": value})
    with pytest.raises(ValueError, match=r"header 'Accept-Encoding' asks for '.+', which the client cannot decode"):
        TEACHERS[provider](settings)


@pytest.mark.parametrize("value", ["identity", "gzip", "gzip;q=1.0, deflate", "gzip, br;q=0"])
async def test_an_accept_encoding_the_client_decodes_is_sent_as_given(value):
    async with Recorder() as srv:
        await ask("openai-compatible", srv.url, extra_headers={"Accept-Encoding": value})
        assert srv.values("accept-encoding") == [value]


@pytest.mark.parametrize("provider", TEACHERS)
async def test_a_user_agent_is_sent_unless_the_user_gives_one(provider):
    """Some gateways and WAFs refuse a request without one (the SDKs send theirs)."""
    async with Recorder() as srv:
        await ask(provider, srv.url)
        assert srv.values("User-Agent") == [f"synthledger/{__version__}"]
        await ask(provider, srv.url, extra_headers={"User-Agent": "corp-approved/1"})
        assert srv.values("user-agent") == ["corp-approved/1"]


@pytest.mark.parametrize("base, path, joined", [
    ("http://h:8000/v1#docs", "/chat/completions", "http://h:8000/v1/chat/completions"),
    ("http://h:8000/#", "/v1/messages", "http://h:8000/v1/messages"),
    ("http://h:8000/v1/", "/chat/completions", "http://h:8000/v1/chat/completions"),
])
def test_endpoint_url_drops_the_base_urls_fragment(base, path, joined):
    assert endpoint_url(base, path) == joined


@pytest.mark.parametrize("provider", TEACHERS)
async def test_a_base_url_with_a_fragment_posts_to_the_endpoint(provider):
    """QA: `base_url = "http://host:8000/v1#local"` posted to /v1 (anthropic: to /): the endpoint's
    path was appended after the fragment, which is never sent. The SDKs drop the fragment."""
    async with Recorder() as srv:
        await ask(provider, srv.url + ("/v1#local" if provider == "openai-compatible" else "#local"))
        assert srv.heads[0][0] == ("POST /v1/chat/completions HTTP/1.1" if provider == "openai-compatible"
                                   else "POST /v1/messages HTTP/1.1")
