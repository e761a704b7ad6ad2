"""The proxy the environment names for a URL (HTTP_PROXY / HTTPS_PROXY, else ALL_PROXY, less NO_PROXY).

The official SDKs (httpx) honour these variables, so behind a company proxy `openai` reached the
teacher and `openai-compatible` must too. Read once per teacher, with the standard library's own
rules plus httpx's (`engine.proxies.environment_proxy_source`); its credentials become a
`Proxy-Authorization` header (a SOCKS5 proxy gets them in its own login instead), and the password
is registered as a secret so it is never written. A proxy the client cannot speak to (https://,
socks4://) fails here, at start-up, naming the variable it came from: the user's fix is in their
environment, not in the config.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit

from synthledger.engine.proxies import environment_proxy_source, without_credentials
from synthledger.engine.redact import register

from .http1 import unsupported_proxy


def env_proxy(url: str) -> tuple[str | None, dict[str, str] | None]:
    """(proxy URL without credentials, headers for the proxy) or (None, None); ValueError for a
    proxy that is neither http:// nor socks5(h)://."""
    found = environment_proxy_source(url)
    if found is None:
        return None, None
    variable, proxy = found
    problem = unsupported_proxy(proxy, f"the proxy in {variable}")
    if problem is not None:
        raise ValueError(problem)
    parts = urlsplit(proxy)
    bare = without_credentials(proxy)
    if parts.username is None:
        return bare, None
    return bare, {"Proxy-Authorization": basic_auth(parts.username, parts.password)}


def basic_auth(username: str | None, password: str | None) -> str:
    """The `Basic` header value for a URL's (percent-encoded) user name and password, both registered
    as secrets first, so neither is ever written."""
    login = f"{unquote(username or '')}:{unquote(password or '')}"
    header = "Basic " + base64.b64encode(login.encode()).decode()
    if password:
        register(unquote(password))
    register(header)
    return header
