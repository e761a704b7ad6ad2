"""The failures of `http1`, one small tree, and what a whole exchange gives back.

Each failure says whether the request may have reached the server (`maybe_sent`), which is what
the budget needs to know: a refused connection was never sent; a read timeout or a connection
dropped mid-response may have been served, so it counts as spent.
"""

from __future__ import annotations

from typing import NamedTuple


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
