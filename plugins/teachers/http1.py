"""A small HTTP/1.1 client for one endpoint: POSTs on pooled keep-alive connections.

Why not aiohttp: the engine's event loop runs on one core, and a generation run sends thousands of
small requests a second against a fast server. Measured in the same process against our test
server (benchmarks/throughput.py, scenario c), aiohttp spent ~370 µs of CPU per request (request
and response objects, multidicts, timers, tracing hooks) where this client spends ~140 µs. The
teacher's body is JSON we encode and decode ourselves, so all this needs is: write one request,
read one response (Content-Length, chunked or until close; gzip/deflate), keep the connection for
the next one, and time out the way the SDKs' httpx does (connect and read apart; waiting for a
pooled connection is not counted, so a request queued here is never "maybe billed").

Headers are one case-insensitive set (`request_head`): the user's replace ours (Host, User-Agent,
Accept-Encoding...) as httpx lets them, since a header sent twice is a 400 at many servers.

Failures are one small tree (`http1_errors`), each saying whether the request may have reached
the server; one connection's bytes and timeouts are `http1_connection`, parsing is `http1_parse`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import NamedTuple
from urllib.parse import urlsplit

from synthledger import __version__
from synthledger.engine.proxies import without_credentials

from . import socks5
from .http1_connection import Connection
from .http1_errors import (BadResponse, ConnectFailed, ConnectTimeout, Disconnected, HttpFailure, ReadTimeout,
                           Response)

# The client and its failures, from one place (the failures live in http1_errors for the connection's sake).
__all__ = ["BadResponse", "ConnectFailed", "ConnectTimeout", "Disconnected", "Http1Client", "HttpFailure",
           "ReadTimeout", "Response", "Target", "endpoint_url", "header_line", "parse_url", "request_head",
           "target_for", "unsupported_proxy"]

DEFAULT_PORTS = {"http": 80, "https": 443}
# Some gateways and WAFs refuse a request that names no client (the SDKs send theirs).
USER_AGENT = f"synthledger/{__version__}"
# The body's framing is ours (Content-Length on every request): one given too is a conflict, a 400.
FRAMING = ("content-length", "transfer-encoding")
DECODED = frozenset({"gzip", "x-gzip", "deflate", "identity"})  # what `decode_body` reads


class Target(NamedTuple):
    """Where requests go: the host to connect to (the proxy, if any) and what the request line says."""

    scheme: str
    host: str
    port: int
    request_target: bytes  # path (and query), or the absolute URL when sent to an HTTP proxy
    host_header: bytes
    tunnel: bytes | None  # a CONNECT request line to a proxy, for https through it
    tls_host: str | None  # server name for TLS; None for plain http
    socks: tuple[str, int, bool] | None = None  # a SOCKS5 proxy's host, port, and whether it resolves names


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query); ValueError naming what is wrong. A #fragment is
    never sent: it names a place in a page, not part of the request."""
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


def endpoint_url(base_url: str, path: str) -> str:
    """`path` appended to `base_url`, less the base's #fragment: a provider builds its endpoint as
    base_url + "/chat/completions", which put the path inside the fragment (never sent), so the POST
    went to the base's own path or "/". The SDKs (httpx) drop the fragment before joining."""
    return base_url.partition("#")[0].rstrip("/") + path


def unsupported_proxy(proxy: str, origin: str = "the proxy") -> str | None:
    """Why `proxy` cannot be used (None if it can): this client speaks plain HTTP to an http://
    proxy (an https:// request goes through it in a CONNECT tunnel, encrypted end to end all the
    same), and SOCKS5 to a socks5:// or socks5h:// one. The message says what to change; the proxy
    is shown without credentials."""
    scheme = urlsplit(proxy).scheme.lower()
    if scheme == "http" or scheme in socks5.SCHEMES:
        return None
    shown = without_credentials(proxy)
    if scheme == "https":
        fix = "give it as http:// (a CONNECT tunnel still encrypts end to end)"
    else:
        fix = ("name an http:// or socks5:// proxy instead (https still goes encrypted end to end through "
               "either), or list the teacher's host in NO_PROXY")
    return f"{origin} ({shown!r}) is {scheme}://, which is not supported: {fix}"


def target_for(url: str, proxy: str | None = None) -> Target:
    scheme, host, port, path = parse_url(url)
    named = f"[{host}]" if ":" in host else host  # an IPv6 literal is bracketed wherever a port may follow
    authority = named if port == DEFAULT_PORTS[scheme] else f"{named}:{port}"
    tls = host if scheme == "https" else None
    if proxy is None:
        return Target(scheme, host, port, path.encode(), authority.encode(), None, tls)
    problem = unsupported_proxy(proxy)
    if problem is not None:
        raise ValueError(problem)
    remote_dns = socks5.SCHEMES.get(urlsplit(proxy).scheme.lower())
    if remote_dns is not None:  # the proxy only opens the connection: the request is as sent direct
        p_host, p_port = socks5.proxy_address(proxy)
        return Target(scheme, host, port, path.encode(), authority.encode(), None, tls, (p_host, p_port, remote_dns))
    _, p_host, p_port, _ = parse_url(proxy)
    if scheme == "http":  # a plain-http request goes to the proxy whole, its URL absolute
        return Target(scheme, p_host, p_port, f"http://{authority}{path}".encode(), authority.encode(), None, None)
    tunnel = f"CONNECT {named}:{port} HTTP/1.1\r\nHost: {named}:{port}\r\n".encode()
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


def request_head(target: Target, headers: dict[str, str], proxy_headers: dict[str, str] | None = None) -> bytes:
    """The request line and headers up to `Content-Length: ` (each request adds its length and body).
    Names are case-insensitive, as httpx's headers are: a later header replaces an earlier one of the
    same name, and the user's replace our Host, User-Agent and Accept-Encoding, so none goes out
    twice (two Host headers are a 400). `proxy_headers` ride along only on a plain-http request sent
    to the proxy; a tunnel's are on its CONNECT, whose Host stays the target's."""
    given: dict[str, tuple[str, str]] = {}
    to_proxy = proxy_headers if proxy_headers and target.tunnel is None and target.socks is None else {}
    for name, value in [*headers.items(), *to_proxy.items()]:
        if name.lower() in FRAMING:
            raise ValueError(f"header {name!r} cannot be set: the client frames each request body itself "
                             "(Content-Length), and a second framing header makes servers refuse every request; "
                             "remove it from extra_headers")
        if name.lower() == "accept-encoding":
            _decodable(name, value)
        given[name.lower()] = (name, value)
    host = given.pop("host", ("Host", target.host_header.decode("latin-1")))
    defaults = [("User-Agent", USER_AGENT), ("Accept-Encoding", "gzip, deflate")]
    pairs = [host, *given.values(), *((k, v) for k, v in defaults if k.lower() not in given)]
    lines = [b"POST " + target.request_target + b" HTTP/1.1", *(header_line(k, v) for k, v in pairs)]
    return b"\r\n".join(lines) + b"\r\nContent-Length: "


def _decodable(name: str, value: str) -> None:
    """A user's Accept-Encoding may only ask for what the client decodes: a reply in another (br,
    zstd, or any under `*`) could not be read, and every answer would be paid for and lost."""
    for part in value.split(","):
        coding, _, params = part.strip().partition(";")
        coding = coding.strip().lower()
        refused = params.replace(" ", "").lower() in ("q=0", "q=0.0", "q=0.00", "q=0.000")
        if coding and coding not in DECODED and not refused:
            raise ValueError(f"header {name!r} asks for {coding!r}, which the client cannot decode; use gzip, "
                             "deflate or identity (or leave the header out: gzip and deflate are asked for)")


class Http1Client:
    """POSTs to one URL. `headers` are sent with every request (values must be latin-1 text);
    `proxy_headers` only to the proxy (on the CONNECT for https, else with each request)."""

    def __init__(self, url: str, headers: dict[str, str], *, connect_timeout: float, read_timeout: float,
                 max_connections: int | None = None, proxy: str | None = None,
                 proxy_headers: dict[str, str] | None = None) -> None:
        self.target = target_for(url, proxy)
        self._head = request_head(self.target, headers, proxy_headers)
        self._tunnel = None
        self._socks_login = socks5.login_from(proxy_headers) if self.target.socks is not None else None
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

    async def post(self, body: bytes, read_timeout: float | None = None) -> Response:
        """At most `max_connections` at once; the rest wait here, in order, with no timeout running.
        `read_timeout` overrides the client's for this request (a retry after a timeout waits longer).
        (A counter and a queue rather than asyncio.Semaphore: nearly every call finds room, and the
        semaphore's per-call cost showed in a zero-latency run's profile.)"""
        if self._limit and (self._busy >= self._limit or self._queued):
            await self._wait_turn()  # (returns holding the slot the last holder passed on)
        else:
            self._busy += 1
        try:
            return await self._post(body, read_timeout or self.read_timeout)
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

    async def _post(self, body: bytes, read_timeout: float) -> Response:
        conn = self._reusable() or await self._connect()
        try:
            response, keep = await conn.exchange(self._head + b"%d\r\n\r\n" % len(body) + body, read_timeout)
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
            if t.socks is not None:
                return await asyncio.wait_for(self._connect_through_socks(loop), self.connect_timeout)
            if self._tunnel is None:
                _, conn = await asyncio.wait_for(loop.create_connection(
                    Connection, t.host, t.port, ssl=self._ssl, server_hostname=t.tls_host), self.connect_timeout)
                return conn
            return await asyncio.wait_for(self._connect_through_proxy(loop), self.connect_timeout)
        except asyncio.TimeoutError as exc:
            raise ConnectTimeout(f"connect timed out after {self.connect_timeout:g}s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {t.host}:{t.port}: {exc}") from exc

    async def _connect_through_socks(self, loop: asyncio.AbstractEventLoop) -> "Connection":
        """The SOCKS5 proxy's tunnel to the teacher, then (for https) TLS inside it."""
        t = self.target
        p_host, p_port, remote_dns = t.socks  # type: ignore[misc]
        sock = await socks5.open_tunnel(p_host, p_port, t.host, t.port, remote_dns=remote_dns, login=self._socks_login)
        try:
            _, conn = await loop.create_connection(Connection, sock=sock, ssl=self._ssl, server_hostname=t.tls_host)
        except BaseException:
            sock.close()
            raise
        return conn

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
        tls = await loop.start_tls(transport, conn, self._ssl, server_hostname=t.tls_host)  # type: ignore[arg-type]
        conn.transport = tls
        return conn

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().abort()
