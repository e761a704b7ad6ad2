"""One connection of `http1`'s pool: an asyncio protocol that sends a request and reads its response.

Kept apart from the pool so each has one job: this owns a socket's bytes and its read timeout (time
since the last byte, as httpx's and aiohttp's sock_read mean it), the pool owns which connection
carries which request.
"""

from __future__ import annotations

import asyncio
import zlib

from .http1_errors import BadResponse, Disconnected, ReadTimeout, Response
from .http1_parse import ResponseParser


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
