"""The proxy the environment names for a teacher's URL, read as the official SDKs (httpx) read it.

Every teacher must honour HTTP_PROXY / HTTPS_PROXY / ALL_PROXY and NO_PROXY as the SDKs do: behind
a company proxy, `openai` reached its teacher and the lean clients must too. Kept apart from the
plugin API (`api` re-exports it) so the engine's own messages (run/misconfig.py) read it without
importing a plugin.
"""

from __future__ import annotations


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (see `environment_proxy_source`), or None."""
    found = environment_proxy_source(url)
    return None if found is None else found[1]


def environment_proxy_source(url: str) -> tuple[str, str] | None:
    """(the variable that names it, the proxy for `url` with its scheme and credentials as given), or
    None. The SDKs (httpx) honour these variables, and so must every teacher: HTTP_PROXY /
    HTTPS_PROXY by the URL's scheme, else ALL_PROXY, less NO_PROXY. The standard library's rules
    (lower-case names win; NO_PROXY hosts and domain suffixes, `*`), plus httpx's (and curl's)
    addresses and CIDR blocks in NO_PROXY for a host given as an IP (`10.0.0.0/8`, `::1`)."""
    import os

    if "://" not in url or not any(name.lower().endswith("_proxy") for name in os.environ):
        return None  # (nearly always: skip importing urllib.request)
    from urllib.parse import urlsplit
    from urllib.request import getproxies_environment, proxy_bypass_environment

    target = urlsplit(url)
    proxies = getproxies_environment()
    key = target.scheme.lower() if proxies.get(target.scheme.lower()) else "all"
    proxy = proxies.get(key)
    if not proxy or proxy_bypass_environment(target.netloc.rpartition("@")[2], proxies):
        return None
    if _no_proxy_address(target.hostname, proxies.get("no", "")):
        return None
    variable = f"{key}_proxy" if os.environ.get(f"{key}_proxy") else f"{key.upper()}_PROXY"
    return variable, proxy if "://" in proxy else "http://" + proxy


def _no_proxy_address(host: str | None, no_proxy: str) -> bool:
    """Whether `host`, an IP address, falls in a NO_PROXY address or block (`127.0.0.0/8`,
    `fd00::/8`, `[::1]`): urllib compares entries as text only, so a block never matched."""
    import ipaddress

    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False  # a name: urllib's suffix rules have already decided
    for entry in no_proxy.split(","):
        try:
            if address in ipaddress.ip_network(entry.strip().replace("[", "").replace("]", ""), strict=False):
                return True
        except ValueError:
            continue
    return False


def without_credentials(proxy: str) -> str:
    """scheme://host:port of a proxy URL: what may be shown or logged (an IPv6 host keeps its brackets)."""
    from urllib.parse import urlsplit

    parts = urlsplit(proxy)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
