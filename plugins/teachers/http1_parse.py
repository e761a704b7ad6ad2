"""Reading one HTTP/1.x response from bytes as they arrive (the parsing half of `http1`).

Kept apart from the connection handling so it can be fed byte by byte in tests: a response split
at any point must read the same as one that arrived whole.
"""

from __future__ import annotations

MAX_HEAD = 64 * 1024  # a response head larger than this is not a chat API's


class ResponseParser:
    """`feed` bytes until it returns True; then `status`, `headers`, `body`, `keep_alive` are set.
    ValueError: the bytes are not an HTTP/1.x response. `until_close`: the body ends with the
    connection (call `close()` then). `extra`: bytes came after the response (not reusable)."""

    def __init__(self, head_only: bool = False) -> None:
        self.head_only = head_only  # a CONNECT reply: no body follows a 2xx
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.keep_alive = True
        self.until_close = False
        self.extra = False
        self._buf = bytearray()
        # The state is the unbound function: a bound method kept on the parser would make a cycle
        # (parser -> method -> parser), freed only by the cyclic collector, which a run lets objects
        # outlive (engine/run/collector.py): a 50k-query run kept ~7 MB of responses that way.
        self._state = ResponseParser._head
        self._length = 0
        self._chunks: list[bytes] = []

    def feed(self, data: bytes) -> bool:
        self._buf += data
        while True:
            step = self._state(self)
            if step is None:
                return False  # wait for more bytes
            if step is True:
                self.extra = bool(self._buf)
                return True

    def close(self) -> None:
        """The connection ended: a body read until close is whole."""
        self.body = bytes(self._buf)
        self._buf.clear()

    def _head(self) -> bool | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise ValueError("response head too large")
            if self._buf and not b"HTTP/".startswith(bytes(self._buf[:5])):
                raise ValueError(f"not an HTTP response: {bytes(self._buf[:40])!r}")
            return None
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        version, status = _status_line(lines[0])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"malformed header line {line[:60]!r}")
            name = name.lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200 and status != 101:  # an interim response: the real one follows
            return False
        self.status, self.headers = status, headers
        connection = headers.get("connection", "").lower()
        self.keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        return self._choose_body()

    def _choose_body(self) -> bool | None:
        if self.head_only or self.status in (204, 304):
            return True
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._state = ResponseParser._chunk_size
            return False
        length = self.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ValueError(f"bad content-length {length!r}")
            self._length = int(length)
            self._state = ResponseParser._sized
            return False
        self.until_close, self.keep_alive = True, False
        self._state = ResponseParser._rest
        return None

    def _sized(self) -> bool | None:
        if len(self._buf) < self._length:
            return None
        self.body = bytes(self._buf[: self._length])
        del self._buf[: self._length]
        return True

    def _chunk_size(self) -> bool | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            return None
        size_text = bytes(self._buf[:end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"bad chunk size {size_text[:20]!r}") from None
        del self._buf[: end + 2]
        if size == 0:
            self._state = ResponseParser._trailers
        else:
            self._length = size
            self._state = ResponseParser._chunk
        return False

    def _chunk(self) -> bool | None:
        if len(self._buf) < self._length + 2:
            return None
        if self._buf[self._length: self._length + 2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        self._chunks.append(bytes(self._buf[: self._length]))
        del self._buf[: self._length + 2]
        self._state = ResponseParser._chunk_size
        return False

    def _trailers(self) -> bool | None:
        if self._buf[:2] == b"\r\n":
            del self._buf[:2]
        else:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return None
            del self._buf[: end + 4]
        self.body = b"".join(self._chunks)
        return True

    def _rest(self) -> bool | None:
        return None  # everything up to the connection's end; see close()


def _status_line(line: str) -> tuple[str, int]:
    version, _, rest = line.partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit() or rest[3:4] not in ("", " "):
        raise ValueError(f"malformed status line {line[:60]!r}")
    return version, int(code)
