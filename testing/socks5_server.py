"""A SOCKS5 proxy for tests (RFC 1928, user/password login of RFC 1929), relaying to 127.0.0.1.

It behaves as `ssh -D` and dante do where a client can trip: it picks a login method from those
offered (0xFF when none will do), closes the connection after a refused login, answers CONNECT
with its own bound address (a domain name is a name, resolved here), and relays bytes until either
side closes. What each client asked for is kept, to be read by the test: the login methods offered,
the address (type, host, port), and the first bytes sent through the tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class Seen:
    offered: list[bytes] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    addresses: list[tuple[int, str, int]] = field(default_factory=list)  # (address type, host, port)
    first_bytes: list[bytes] = field(default_factory=list)


class Socks5Server:
    def __init__(self, login: tuple[str, str] | None = None, reply: int = 0) -> None:
        self.login = login  # None: no login asked
        self.reply = reply  # the CONNECT reply code (0: succeeded); the others are refusals
        self.seen = Seen()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, scheme: str = "socks5h", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await self._logged_in(reader, writer):
                await self._connect(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _logged_in(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        _, n = await reader.readexactly(2)
        offered = await reader.readexactly(n)
        self.seen.offered.append(offered)
        wanted = 2 if self.login else 0
        if wanted not in offered:
            writer.write(b"\x05\xff")
            return False
        writer.write(bytes([5, wanted]))
        if not self.login:
            return True
        _, size = await reader.readexactly(2)
        user = (await reader.readexactly(size)).decode()
        (size,) = await reader.readexactly(1)
        password = (await reader.readexactly(size)).decode()
        self.seen.logins.append((user, password))
        ok = (user, password) == self.login
        writer.write(b"\x01\x00" if ok else b"\x01\x01")
        return ok

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
        elif kind == 4:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        else:
            (size,) = await reader.readexactly(1)
            host = (await reader.readexactly(size)).decode()
        (port,) = struct.unpack(">H", await reader.readexactly(2))
        self.seen.addresses.append((kind, host, port))
        reply = self.reply or (7 if command != 1 else 0)
        if reply:
            writer.write(bytes([5, reply, 0, 1]) + bytes(6))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1" if host == "localhost" else host, port)
        except OSError:
            writer.write(bytes([5, 5, 0, 1]) + bytes(6))  # connection refused
            return
        bound = socket.inet_aton("127.0.0.1") + struct.pack(">H", up_writer.get_extra_info("sockname")[1])
        writer.write(b"\x05\x00\x00\x01" + bound)
        first = await reader.read(65536)
        self.seen.first_bytes.append(first)
        up_writer.write(first)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.contextmanager
def socks5_in_thread(login: tuple[str, str] | None = None, reply: int = 0) -> Iterator[Socks5Server]:
    """The proxy on its own loop in a thread, for a client in another process (the real CLI)."""
    proxy = Socks5Server(login, reply)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(proxy.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="socks5-test-proxy", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
