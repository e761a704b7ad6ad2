"""The proxy the environment names for a URL (HTTP_PROXY / HTTPS_PROXY, less NO_PROXY).

The official SDKs (httpx) honour these variables, so behind a company proxy `openai` reached the
teacher and `openai-compatible` must too. Read once per teacher, with the standard library's own
rules (lower-case names win, NO_PROXY matched as urllib matches it); its credentials become a
`Proxy-Authorization` header, and the password is registered as a secret so it is never written.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit

from synthledger.engine.api import environment_proxy, without_credentials
from synthledger.engine.redact import register


def env_proxy(url: str) -> tuple[str | None, dict[str, str] | None]:
    """(proxy URL without credentials, headers for the proxy) or (None, None)."""
    proxy = environment_proxy(url)
    if proxy is None:
        return None, None
    parts = urlsplit(proxy)
    bare = without_credentials(proxy)
    if parts.username is None:
        return bare, None
    login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    header = "Basic " + base64.b64encode(login.encode()).decode()
    if parts.password:
        register(unquote(parts.password))
    register(header)
    return bare, {"Proxy-Authorization": header}
