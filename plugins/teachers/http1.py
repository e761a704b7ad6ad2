"""A small HTTP/1.1 client for one endpoint: POSTs on pooled keep-alive connections.

Why not aiohttp: the engine's event loop runs on one core, and a generation run sends thousands of
small requests a second against a fast server. Measured in the same process against our test
server (benchmarks/throughput.py, scenario c), aiohttp spent ~370 µs of CPU per request (request
and response objects, multidicts, timers, tracing hooks) where this client spends ~140 µs. The
teacher's body is JSON we encode and decode ourselves, so all this needs is: write one request,
read one response (Content-Length, chunked or until close; gzip/deflate), keep the connection for
the next one, and time out the way the SDKs' httpx does (connect and read apart; waiting for a
pooled connection is not counted, so a request queued here is never "maybe billed").

Failures are one small tree (see `HttpFailure`), each saying whether the request may have reached
the server, which is what the budget needs to know: a refused connection was never sent; a read
timeout or a connection dropped mid-response may have been served.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from typing import NamedTuple
from urllib.parse import urlsplit

from .http1_parse import ResponseParser

DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpFailure(Exception):
    """A request that got no complete HTTP response; `maybe_sent`: the server may have acted on it."""

    maybe_sent = True


class ConnectFailed(HttpFailure):
    """No connection (refused, unknown host, TLS handshake refused): nothing was sent."""

    maybe_sent = False


class ConnectTimeout(ConnectFailed):
    """The connection was not made within the connect timeout: nothing was sent."""


class ReadTimeout(HttpFailure):
    """Sent, and the server went quiet for longer than the read timeout."""


class Disconnected(HttpFailure):
    """Sent, and the connection closed (or broke) before the response was whole."""


class BadResponse(HttpFailure):
    """Sent, and what came back is not HTTP/1.x (or its body cannot be decoded)."""


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case; repeated headers joined by ", "
    body: bytes


class Target(NamedTuple):
    """Where requests go: the host to connect to (the proxy, if any) and what the request line says."""

    scheme: str
    host: str
    port: int
    request_target: bytes  # path (and query), or the absolute URL when sent to an HTTP proxy
    host_header: bytes
    tunnel: bytes | None  # a CONNECT request line to a proxy, for https through it
    tls_host: str | None  # server name for TLS; None for plain http


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query); ValueError naming what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, parts.hostname, port, path


def target_for(url: str, proxy: str | None = None) -> Target:
    scheme, host, port, path = parse_url(url)
    authority = host if port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        authority = f"[{host}]" if port == DEFAULT_PORTS[scheme] else f"[{host}]:{port}"
    tls = host if scheme == "https" else None
    if proxy is None:
        return Target(scheme, host, port, path.encode(), authority.encode(), None, tls)
    p_scheme, p_host, p_port, _ = parse_url(proxy)
    if p_scheme != "http":
        raise ValueError(f"proxy {proxy!r}: only http:// proxies are supported")
    if scheme == "http":  # a plain-http request goes to the proxy whole, its URL absolute
        return Target(scheme, p_host, p_port, f"http://{authority}{path}".encode(), authority.encode(), None, None)
    tunnel = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
    return Target(scheme, p_host, p_port, path.encode(), authority.encode(), tunnel, tls)


def header_line(name: str, value: str) -> bytes:
    """`Name: value` as sent; ValueError for what cannot be a header (a line break in it would
    end the header early and let its text be read as another header or a body)."""
    if not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value:
        raise ValueError(f"header {name!r} cannot be sent: names may not hold ':' or spaces, "
                         "and neither names nor values line breaks")
    try:
        return f"{name}: {value}".encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name!r} holds characters HTTP headers cannot carry (only Latin-1)") from None


class Http1Client:
    """POSTs to one URL. `headers` are sent with every request (values must be latin-1 text);
    `proxy_headers` only to the proxy (on the CONNECT for https, else with each request)."""

    def __init__(self, url: str, headers: dict[str, str], *, connect_timeout: float, read_timeout: float,
                 max_connections: int | None = None, proxy: str | None = None,
                 proxy_headers: dict[str, str] | None = None) -> None:
        self.target = target_for(url, proxy)
        extra = dict(headers)
        if proxy_headers and self.target.tunnel is None:
            extra.update(proxy_headers)
        lines = [b"POST " + self.target.request_target + b" HTTP/1.1", b"Host: " + self.target.host_header]
        lines += [header_line(k, v) for k, v in extra.items()]
        lines.append(b"Accept-Encoding: gzip, deflate")
        self._head = b"\r\n".join(lines) + b"\r\nContent-Length: "
        self._tunnel = None
        if self.target.tunnel is not None:
            auth = b"".join(header_line(k, v) + b"\r\n" for k, v in (proxy_headers or {}).items())
            self._tunnel = self.target.tunnel + auth + b"\r\n"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._limit = max_connections or 0
        self._busy = 0  # exchanges under way (each holds a connection)
        self._queued: collections.deque[asyncio.Future[None]] = collections.deque()
        self._idle: list[Connection] = []
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.target.tls_host else None

    async def post(self, body: bytes) -> Response:
        """At most `max_connections` at once; the rest wait here, in order, with no timeout running.
        (A counter and a queue rather than asyncio.Semaphore: nearly every call finds room, and the
        semaphore's per-call cost showed in a zero-latency run's profile.)"""
        if self._limit and (self._busy >= self._limit or self._queued):
            await self._wait_turn()  # (returns holding the slot the last holder passed on)
        else:
            self._busy += 1
        try:
            return await self._post(body)
        finally:
            self._release()

    def _release(self) -> None:
        """Pass the slot to the first caller still waiting, or free it."""
        while self._queued:
            turn = self._queued.popleft()
            if not turn.done():  # (one cancelled while waiting is skipped)
                turn.set_result(None)
                return
        self._busy -= 1

    async def _wait_turn(self) -> None:
        turn = asyncio.get_running_loop().create_future()
        self._queued.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():  # handed the slot as it was being cancelled
                self._release()
            raise

    async def _post(self, body: bytes) -> Response:
        conn = self._reusable() or await self._connect()
        try:
            response, keep = await conn.exchange(self._head + b"%d\r\n\r\n" % len(body) + body, self.read_timeout)
        except BaseException:
            conn.abort()  # (cancelled mid-exchange too: the connection's state is unknown)
            raise
        if keep and conn.alive:
            self._idle.append(conn)
        else:
            conn.abort()
        return response

    def _reusable(self) -> "Connection | None":
        while self._idle:
            conn = self._idle.pop()
            if conn.alive:
                return conn
        return None

    async def _connect(self) -> "Connection":
        loop = asyncio.get_running_loop()
        t = self.target
        try:
            if self._tunnel is None:
                _, conn = await asyncio.wait_for(loop.create_connection(
                    Connection, t.host, t.port, ssl=self._ssl, server_hostname=t.tls_host), self.connect_timeout)
                return conn
            return await asyncio.wait_for(self._connect_through_proxy(loop), self.connect_timeout)
        except asyncio.TimeoutError as exc:
            raise ConnectTimeout(f"connect timed out after {self.connect_timeout:g}s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {t.host}:{t.port}: {exc}") from exc

    async def _connect_through_proxy(self, loop: asyncio.AbstractEventLoop) -> "Connection":
        """A CONNECT tunnel to the proxy, then TLS inside it."""
        t = self.target
        transport, conn = await loop.create_connection(Connection, t.host, t.port)
        try:
            response, _ = await conn.exchange(self._tunnel or b"", self.connect_timeout, head_only=True)
        except HttpFailure as exc:
            transport.abort()
            raise ConnectFailed(f"proxy CONNECT failed: {exc}") from exc
        if response.status != 200:
            transport.abort()
            raise ConnectFailed(f"proxy refused CONNECT: HTTP {response.status}")
        tls = await loop.start_tls(transport, conn, self._ssl or ssl.create_default_context(),
                                   server_hostname=t.tls_host)
        conn.transport = tls
        return conn

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().abort()


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.alive = False
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[tuple[Response, bool]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._read_timeout = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.alive = True

    async def exchange(self, request: bytes, read_timeout: float, head_only: bool = False) -> tuple[Response, bool]:
        """Send `request`; the response and whether the connection may carry another."""
        self._loop = loop = asyncio.get_running_loop()
        self._parser = ResponseParser(head_only)
        self._waiter = waiter = loop.create_future()
        self._read_timeout = read_timeout
        self._last_data = loop.time()
        self._timer = loop.call_at(self._last_data + read_timeout, self._check_quiet)
        self.transport.write(request)  # type: ignore[union-attr]
        try:
            return await waiter
        finally:
            self._timer.cancel()
            self._waiter = None

    def data_received(self, data: bytes) -> None:
        waiter, parser = self._waiter, self._parser
        if waiter is None or waiter.done() or parser is None:
            self.alive = False  # bytes nobody asked for: the connection cannot be trusted again
            return
        self._last_data = self._loop.time()  # type: ignore[union-attr]
        try:
            done = parser.feed(data)
        except ValueError as exc:
            self.alive = False
            waiter.set_exception(BadResponse(str(exc)))
            return
        if done:
            self._finish(waiter, parser)

    def _finish(self, waiter: asyncio.Future[tuple[Response, bool]], parser: ResponseParser) -> None:
        try:
            body = decode_body(parser.body, parser.headers.get("content-encoding", ""))
        except (zlib.error, ValueError) as exc:
            self.alive = False
            waiter.set_exception(BadResponse(f"cannot decode the response body: {exc}"))
            return
        waiter.set_result((Response(parser.status, parser.headers, body), parser.keep_alive and not parser.extra))

    def eof_received(self) -> bool | None:
        self._closed(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed(exc)

    def _closed(self, exc: Exception | None) -> None:
        self.alive = False
        waiter, parser = self._waiter, self._parser
        if waiter is None or waiter.done():
            return
        if parser is not None and parser.until_close:  # a body delimited by the connection's end
            parser.close()
            self._finish(waiter, parser)
            return
        why = f": {exc}" if exc else ""
        waiter.set_exception(Disconnected(f"server disconnected before the response was complete{why}"))

    def _check_quiet(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        loop = self._loop
        assert loop is not None
        due = self._last_data + self._read_timeout
        if loop.time() < due:  # data came meanwhile: wait out the rest of the quiet period
            self._timer = loop.call_at(due, self._check_quiet)
            return
        self.alive = False
        waiter.set_exception(ReadTimeout(f"no response within {self._read_timeout:g}s"))

    def abort(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]


def decode_body(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return body
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:  # some servers send raw deflate without the zlib wrapper
            return zlib.decompress(body, -zlib.MAX_WBITS)
    raise ValueError(f"unsupported content-encoding {encoding!r}")
