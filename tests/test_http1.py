"""The lean HTTP/1.1 client behind `openai-compatible`, against real sockets on 127.0.0.1: servers
that answer the way real ones do, including the unkind ways (a response split anywhere, chunked or
gzipped bodies, `Connection: close`, a connection dropped mid-body or while idle in the pool, a
server that goes quiet), TLS, and a CONNECT proxy asking for credentials."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from synthledger.plugins.teachers.env_proxy import env_proxy
from synthledger.plugins.teachers.http1 import (BadResponse, ConnectFailed, Disconnected, Http1Client, ReadTimeout,
                                                parse_url)
from synthledger.plugins.teachers.http1_parse import ResponseParser

def response(body: bytes, *head: bytes, status: bytes = b"200 OK") -> bytes:
    lines = [b"HTTP/1.1 " + status, *head, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Ratelimit-Limit-Requests: 60\r\n"
           b"X-Ratelimit-Limit-Requests: 61\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
OK = response(b'{"ok": true}', b"Content-Type: application/json")
GZIPPED = response(gzip.compress(b'{"a": 1}', mtime=0), b"Content-Encoding: gzip")
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"{}")


@pytest.mark.parametrize("raw, body", [(response(b'{"x": 1}'), b'{"x": 1}'), (CHUNKED, b"hello world"),
                                       (GZIPPED, b'{"a": 1}'), (INTERIM, b"{}")],
                         ids=["sized", "chunked", "gzip", "interim-100"])
def test_a_response_reads_the_same_whole_or_split_at_every_byte(raw, body):
    from synthledger.plugins.teachers.http1_connection import decode_body

    for step in (len(raw), 1, 3):
        parser = ResponseParser()
        done = False
        for i in range(0, len(raw), step):
            assert not done
            done = parser.feed(raw[i:i + step])
        assert done and parser.status == 200 and not parser.extra
        assert decode_body(parser.body, parser.headers.get("content-encoding", "")) == body
    if raw is CHUNKED:
        assert parser.headers["x-ratelimit-limit-requests"] == "60, 61"


@pytest.mark.parametrize("raw", [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n", b"HTTP/2 200\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
                         ids=["ssh", "bad-status", "http2", "bad-length", "bad-header", "bad-chunk"])
def test_what_is_not_http_is_refused(raw):
    with pytest.raises(ValueError):
        ResponseParser().feed(raw)


class Scripted:
    """A server on 127.0.0.1 answering each request with the next `replies` entry: bytes to send,
    or a callable(writer) coroutine for the unkind cases. Counts connections and requests."""

    def __init__(self, *replies, ssl_context: ssl.SSLContext | None = None) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.requests: list[bytes] = []
        self.ssl_context = ssl_context

    async def __aenter__(self) -> "Scripted":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies.pop(0)
                if callable(reply):
                    await reply(writer)
                    return
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def client(port: int, scheme: str = "http", host: str = "127.0.0.1", **kw) -> Http1Client:
    kw.setdefault("connect_timeout", 2.0)
    kw.setdefault("read_timeout", 2.0)
    return Http1Client(f"{scheme}://{host}:{port}/v1/chat/completions", {"Authorization": "Bearer k"}, **kw)


async def test_keep_alive_reuses_one_connection_and_sends_what_it_says():
    async with Scripted(OK, CHUNKED, GZIPPED) as srv:
        c = client(srv.port)
        bodies = [(await c.post(b'{"q": %d}' % i)).body for i in range(3)]
        await c.aclose()
    assert bodies == [b'{"ok": true}', b"hello world", b'{"a": 1}'] and srv.connections == 1
    first = srv.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\n" in first and first.endswith(b'\r\n\r\n{"q": 0}')


async def test_connection_close_and_a_body_read_until_close():
    until_close = b"HTTP/1.0 200 OK\r\n\r\n{\"til\": \"close\"}"
    async with Scripted(response(b"{}", b"Connection: close")) as a, Scripted(until_close) as b:
        ca, cb = client(a.port), client(b.port)
        assert (await ca.post(b"{}")).body == b"{}" and not ca._idle  # not pooled: the server said close
        assert (await cb.post(b"{}")).body == b'{"til": "close"}'


async def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async def answer_then_close(writer):
        writer.write(response(b"{}"))
        await writer.drain()

    async with Scripted(answer_then_close, response(b"[]")) as srv:
        c = client(srv.port)
        await c.post(b"{}")
        await asyncio.sleep(0.05)  # the server's close reaches the pooled connection
        assert (await c.post(b"{}")).body == b"[]"
    assert srv.connections == 2


async def test_dropped_mid_body_is_a_disconnect_that_may_have_been_served():
    async def half(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\"")
        await writer.drain()

    async with Scripted(half) as srv:
        with pytest.raises(Disconnected) as info:
            await client(srv.port).post(b"{}")
    assert info.value.maybe_sent


async def test_garbage_instead_of_http_is_a_bad_response():
    async with Scripted(b"hello there, this is not HTTP\r\n\r\n") as srv:
        with pytest.raises(BadResponse):
            await client(srv.port).post(b"{}")


async def test_a_quiet_server_times_out_but_a_slow_steady_one_does_not():
    async def silent(writer):
        await asyncio.sleep(5)

    async def trickle(writer):
        raw = response(b'{"slow": true}')
        for i in range(0, len(raw), 4):  # each piece well inside the read timeout, all well beyond it
            writer.write(raw[i:i + 4])
            await writer.drain()
            await asyncio.sleep(0.04)

    async with Scripted(silent) as quiet, Scripted(trickle) as slow:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ReadTimeout) as info:
            await client(quiet.port, read_timeout=0.3).post(b"{}")
        assert 0.25 < loop.time() - t0 < 2 and info.value.maybe_sent
        t0 = loop.time()
        assert (await client(slow.port, read_timeout=0.3).post(b"{}")).body == b'{"slow": true}'
        assert loop.time() - t0 > 0.3


async def test_a_refused_connection_was_never_sent():
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(ConnectFailed) as info:
        await client(port).post(b"{}")
    assert not info.value.maybe_sent


def test_an_ipv6_host_is_bracketed_in_the_host_header_and_the_connect_line():
    from synthledger.plugins.teachers.http1 import target_for

    assert target_for("http://[::1]:8000/v1").host_header == b"[::1]:8000"
    via = target_for("https://[::1]/v1", "http://[::2]:3128")
    assert via.host == "::2" and via.port == 3128 and via.tls_host == "::1"
    assert via.tunnel == b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n"


def test_urls_it_cannot_use_are_refused_up_front():
    for bad in ("ftp://h/v1", "http://:80/v1", "http://h:99999/v1", "localhost:8000/v1"):
        with pytest.raises(ValueError):
            parse_url(bad)


@pytest.fixture
def tls_server_context(tmp_path: Path, monkeypatch) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1, trusted by clients through SSL_CERT_FILE (as a user
    with a private CA would)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_https_directly_and_through_a_connect_proxy_with_credentials(tls_server_context):
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        up_r, up_w = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)

    async with Scripted(OK, OK, ssl_context=tls_server_context) as srv:
        assert (await client(srv.port, "https").post(b"{}")).body == b'{"ok": true}'
        p = await asyncio.start_server(proxy, "127.0.0.1", 0)
        p_port = p.sockets[0].getsockname()[1]
        via = client(srv.port, "https", proxy=f"http://127.0.0.1:{p_port}",
                     proxy_headers={"Proxy-Authorization": "Basic Ym9iOnNlY3JldA=="})
        assert (await via.post(b"{}")).body == b'{"ok": true}'
        p.close()
    assert seen[0].startswith(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % srv.port)
    assert b"Proxy-Authorization: Basic Ym9iOnNlY3JldA==" in seen[0]
    assert b"Proxy-Authorization" not in srv.requests[1]  # the credentials went to the proxy alone


async def test_a_proxy_that_refuses_connect_is_a_connection_failure():
    proxy = await asyncio.start_server(
        lambda r, w: w.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"),
        "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    with pytest.raises(ConnectFailed, match="407"):
        await client(443, "https", host="teacher.invalid", proxy=f"http://127.0.0.1:{port}").post(b"{}")
    proxy.close()


def test_env_proxy_reads_credentials_once_and_honours_no_proxy(monkeypatch):
    from synthledger.engine.redact import known_secrets

    import os

    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:  # ALL_PROXY counts too
        monkeypatch.delenv(name)
    assert env_proxy("https://api.example.com/v1") == (None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://bob:s3cr%40t-pass-99@proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    url, headers = env_proxy("https://api.example.com/v1/chat/completions")
    assert url == "http://proxy.corp:3128"
    assert headers == {"Proxy-Authorization": "Basic Ym9iOnMzY3JAdC1wYXNzLTk5"}
    assert "s3cr@t-pass-99" in known_secrets()
    assert env_proxy("http://api.example.com/v1") == (None, None)  # HTTPS_PROXY is for https only
    assert env_proxy("https://127.0.0.1:8000/v1") == (None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://[fd00::5]:3128")
    assert env_proxy("https://api.example.com/v1") == ("http://[fd00::5]:3128", None)


@pytest.mark.parametrize("headers, problem", [
    ({"X-Team": "ops\r\nX-Injected: 1"}, "line breaks"),
    ({"X-Team": "caf\u00e9 \u2603"}, "Latin-1"),
    ({"Bad Name": "x"}, "names may not"),
])
def test_a_header_that_cannot_be_sent_is_a_configuration_error(headers, problem):
    """Found when the teacher is built (start-up, one line naming [teacher]), not as a failed
    request: a line break would smuggle a header, and a character beyond Latin-1 cannot be sent."""
    from synthledger.plugins.teachers.openai_compatible import OpenAICompatibleTeacher
    from synthledger.plugins.teachers.settings import TeacherSettings

    settings = TeacherSettings(provider="openai-compatible", model="m", base_url="http://127.0.0.1:9/v1",
                               extra_headers=headers)
    # (A TeacherSetupError: the run says which section, "[teacher] ...", as a config error.)
    with pytest.raises(ValueError, match=rf"^header .*{problem}"):
        OpenAICompatibleTeacher(settings)
    with pytest.raises(ValueError, match=r"^base_url is not a usable URL"):
        OpenAICompatibleTeacher(TeacherSettings(provider="openai-compatible", model="m", base_url="http://127.0.0.1:99999/v1"))


def test_a_parser_is_freed_without_the_cyclic_collector():
    """A run lets young objects outlive many allocations (engine/run/collector.py): a parser that
    kept a bound method of itself (a cycle) held every response until a full collection, ~7 MB over a
    50k-query run. Freed by reference counting, it goes as soon as its exchange does."""
    import gc
    import weakref

    gc.disable()
    try:
        for raw in (response(b'{"x": 1}'), CHUNKED, b"HTTP/1.0 200 OK\r\n\r\n{}"):
            parser = ResponseParser()
            parser.feed(raw[:5])
            parser.feed(raw[5:])
            ref = weakref.ref(parser)
            del parser
            assert ref() is None
    finally:
        gc.enable()


async def test_max_connections_holds_and_passes_slots_in_order_even_through_cancellations():
    async def slow(writer):
        await asyncio.sleep(0.1)
        writer.write(response(b"{}"))
        await writer.drain()

    async with Scripted(*[slow] * 6) as srv:
        c = client(srv.port, max_connections=2)
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, c._busy)
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        posts = [asyncio.ensure_future(c.post(b"{}")) for _ in range(6)]
        await asyncio.sleep(0.02)
        posts[3].cancel()  # a caller that gives up while queued leaves its turn to the next
        results = await asyncio.gather(*posts, return_exceptions=True)
        watcher.cancel()
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(r.body == b"{}" for i, r in enumerate(results) if i != 3)
    assert peak == 2 and c._busy == 0 and srv.connections <= 5
