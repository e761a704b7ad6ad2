"""A connection through a SOCKS5 proxy (RFC 1928), with a user name and password where the proxy's
URL gives them (RFC 1929).

`ALL_PROXY=socks5://...` (an `ssh -D` tunnel, a desktop proxy client) is common on developers'
machines, and stopped every run at start-up: the client spoke only HTTP to a proxy. Here it opens
the proxy's tunnel to the teacher's host; what goes through it (TLS for https, then HTTP) is as on a
direct connection. `socks5h://` lets the proxy resolve the host name, `socks5://` resolves it here,
as curl and httpx read the two.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import struct
from urllib.parse import urlsplit

from synthledger.engine.proxies import without_credentials

from .http1_errors import ConnectFailed

# scheme -> whether the proxy resolves the teacher's host name
SCHEMES = {"socks5": False, "socks5h": True}

_NO_LOGIN, _USER_PASSWORD, _NONE_ACCEPTABLE = 0x00, 0x02, 0xFF
_REPLIES = {1: "general SOCKS server failure", 2: "connection not allowed by the proxy's rules",
            3: "network unreachable", 4: "host unreachable", 5: "connection refused", 6: "TTL expired",
            7: "command not supported", 8: "address type not supported"}


def proxy_address(proxy: str) -> tuple[str, int]:
    """(host, port) of a socks5:// URL; port 1080, SOCKS's own, where it names none."""
    parts = urlsplit(proxy)
    try:
        port = parts.port or 1080
    except ValueError as exc:
        raise ValueError(f"{without_credentials(proxy)!r}: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"{without_credentials(proxy)!r} names no host")
    return parts.hostname, port


def login_from(proxy_headers: dict[str, str] | None) -> tuple[str, str] | None:
    """The user name and password a `Proxy-Authorization: Basic` header carries (env_proxy makes
    one from the proxy URL's), for a SOCKS5 proxy's own login."""
    value = next((v for k, v in (proxy_headers or {}).items() if k.lower() == "proxy-authorization"), None)
    if value is None or not value.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(value[6:]).decode().partition(":")
    return user, password


async def open_tunnel(proxy_host: str, proxy_port: int, host: str, port: int, *, remote_dns: bool,
                      login: tuple[str, str] | None) -> socket.socket:
    """A socket connected through the proxy to `host:port`; ConnectFailed naming what went wrong
    (the proxy unreachable, the login refused, the proxy's own reply). Nothing has been sent to
    the teacher when it raises."""
    loop = asyncio.get_running_loop()
    sock = await _connect(loop, proxy_host, proxy_port)
    try:
        await _log_in(loop, sock, login)
        address = await _address(loop, host, port, remote_dns)
        await loop.sock_sendall(sock, b"\x05\x01\x00" + address + struct.pack(">H", port))
        await _read_reply(loop, sock, host, port)
    except OSError as exc:
        sock.close()
        raise ConnectFailed(f"the SOCKS proxy {proxy_host}:{proxy_port} dropped the connection: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    error: OSError | None = None
    try:
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectFailed(f"cannot resolve the SOCKS proxy's host {host}: {exc}") from exc
    for family, kind, proto, _, address in found:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise ConnectFailed(f"cannot connect to the SOCKS proxy {host}:{port}: {error}")


async def _log_in(loop: asyncio.AbstractEventLoop, sock: socket.socket, login: tuple[str, str] | None) -> None:
    offered = bytes([_NO_LOGIN, _USER_PASSWORD]) if login else bytes([_NO_LOGIN])
    await loop.sock_sendall(sock, bytes([5, len(offered)]) + offered)
    version, method = await _read(loop, sock, 2)
    if version != 5:
        raise ConnectFailed("the proxy does not answer as a SOCKS5 proxy")
    if method == _NONE_ACCEPTABLE or method not in offered:
        wants = "" if login else " (it may want a user name and password in the proxy's URL)"
        raise ConnectFailed(f"the SOCKS proxy accepts none of the login methods offered{wants}")
    if method == _NO_LOGIN:
        return
    user, password = (part.encode() for part in login)  # type: ignore[union-attr]
    if len(user) > 255 or len(password) > 255:
        raise ConnectFailed("the SOCKS proxy's user name or password is longer than 255 bytes")
    await loop.sock_sendall(sock, bytes([1, len(user)]) + user + bytes([len(password)]) + password)
    _, status = await _read(loop, sock, 2)
    if status != 0:
        raise ConnectFailed("the SOCKS proxy refused the user name and password in its URL")


async def _address(loop: asyncio.AbstractEventLoop, host: str, port: int, remote_dns: bool) -> bytes:
    """The request's address: an IP as such; a name as a name (socks5h) or as what it resolves to here."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if remote_dns:
            try:
                name = host.encode("idna")
            except UnicodeError as exc:
                raise ConnectFailed(f"cannot send the host name {host!r} to the SOCKS proxy: {exc}") from exc
            return bytes([3, len(name)]) + name
        try:
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectFailed(f"cannot resolve {host}: {exc}") from exc
        ip = ipaddress.ip_address(found[0][4][0])
    return (b"\x01" if ip.version == 4 else b"\x04") + ip.packed


async def _read_reply(loop: asyncio.AbstractEventLoop, sock: socket.socket, host: str, port: int) -> None:
    version, reply, _, kind = await _read(loop, sock, 4)
    if version != 5:
        raise ConnectFailed("the proxy does not answer as a SOCKS5 proxy")
    if reply != 0:
        why = _REPLIES.get(reply, f"reply code {reply}")
        raise ConnectFailed(f"the SOCKS proxy could not connect to {host}:{port}: {why}")
    if kind == 3:
        (size,) = await _read(loop, sock, 1)
    else:
        size = 4 if kind == 1 else 16
    await _read(loop, sock, size + 2)  # the address the proxy bound: of no use to us


async def _read(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ConnectFailed("the SOCKS proxy closed the connection during its handshake")
        data += chunk
    return data
