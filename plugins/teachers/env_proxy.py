"""The proxy the environment names for a URL (HTTP_PROXY / HTTPS_PROXY, less NO_PROXY).

The official SDKs (httpx) honour these variables, so behind a company proxy `openai` reached the
teacher and `openai-compatible` must too. Read once per teacher, with the standard library's own
rules (lower-case names win, NO_PROXY matched as urllib matches it); its credentials become a
`Proxy-Authorization` header, and the password is registered as a secret so it is never written.
"""

from __future__ import annotations

import base64
import os
from urllib.parse import unquote, urlsplit

from synthledger.engine.redact import register


def env_proxy(url: str) -> tuple[str | None, dict[str, str] | None]:
    """(proxy URL without credentials, headers for the proxy) or (None, None)."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None, None  # (nearly always: skip importing urllib.request)
    from urllib.request import getproxies_environment, proxy_bypass_environment

    target = urlsplit(url)
    proxy = getproxies_environment().get(target.scheme.lower())
    if not proxy or proxy_bypass_environment(target.netloc):
        return None, None
    if "://" not in proxy:
        proxy = "http://" + proxy
    parts = urlsplit(proxy)
    bare = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # (an IPv6 host keeps its brackets)
    if parts.username is None:
        return bare, None
    login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    header = "Basic " + base64.b64encode(login.encode()).decode()
    if parts.password:
        register(unquote(parts.password))
    register(header)
    return bare, {"Proxy-Authorization": header}
