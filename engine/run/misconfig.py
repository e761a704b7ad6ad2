"""Failures that say a run is set up wrong, not that the teacher is busy: stop at the first one.

A wrong model name, a base_url where nothing listens, one whose path serves no API (a
missing or doubled `/v1`: HTTP 404 or 405 before any answer), or a max_tokens above the model's
output cap (HTTP 400 naming max_tokens) fails every query the same way. Retrying
each query (with backoff, then the circuit breaker's pauses) only hides the mistake for minutes
while the run looks busy. The words are the same for every provider, because so is the user's fix.
"""

from __future__ import annotations

from typing import Any

from ..proxies import environment_proxy, environment_proxy_source, without_credentials
from ..errors import FailureKind, TeacherError


def endpoint_url(teacher: Any) -> str:
    """Where a teacher sends its requests, as the user configured it (or the SDK's default)."""
    url = getattr(teacher, "url", None)
    return str(url) if url else f"the {getattr(teacher, 'provider', '?')} provider"


def misconfiguration(err: TeacherError, *, role: str, section: str, model: str, url: str,
                     answered: int, asked_max_tokens: int | None = None) -> str | None:
    """The one-line reason to stop the run, or None when `err` may be transient.

    `answered` is how many replies this endpoint has given in this session: a refused connection
    before the first reply means nothing listens at `url`; after one, a server restarting.
    `asked_max_tokens`: a request's max_tokens that a plugin set (ctx.ask), not the config's."""
    if err.kind is FailureKind.MODEL_NOT_FOUND:
        status = f"HTTP {err.status}" if err.status else "not found"
        return (f"the {role} endpoint {url} has no model {model!r} ({status}); "
                f"set [{section}] model to a model it serves")
    if err.kind is FailureKind.TOO_LARGE and answered == 0 and err.status == 413:
        return (f"the {role} endpoint {url} refuses one request of this run as more bytes than it takes "
                f"({err.message}); shorten the prompts (seeds, templates)")
    if err.kind is FailureKind.TOO_LARGE and answered == 0:
        return (f"the {role} endpoint {url} refuses one request of this run as larger than its tokens-per-minute "
                f"limit ({err.message}); lower [{section}] max_tokens, or raise the limit with the provider")
    if err.kind is FailureKind.BAD_REQUEST and "max_tokens" in err.message.lower() and asked_max_tokens is not None:
        return (f"the {role} endpoint {url} refuses max_tokens = {asked_max_tokens} ({err.message}), which the "
                f"strategy or verifier asked for in ctx.ask() ([{section}] max_tokens is not it); "
                f"have the plugin ask for what model {model!r} allows")
    if err.kind is FailureKind.BAD_REQUEST and answered == 0 and "max_tokens" in err.message.lower():
        return (f"the {role} endpoint {url} refuses this run's max_tokens ({err.message}); "
                f"lower [{section}] max_tokens to what model {model!r} allows")
    if err.status == 407:  # only a proxy says it (QA: read as "the teacher refuses our requests as invalid")
        found = environment_proxy_source(url)
        named = (f"the proxy {without_credentials(found[1])} that {found[0]} names" if found is not None
                 else "a proxy between us and it")
        return (f"{named} wants credentials to reach the {role} endpoint {url} (HTTP 407 Proxy Authentication "
                f"Required); give them in the proxy's URL (http://user:password@host:port)")
    if err.kind is FailureKind.BAD_REQUEST and err.status in (404, 405) and answered == 0:
        return (f"the {role} endpoint {url} serves no API at that path ({err.message}); "
                f"is [{section}] base_url right (with or without /v1)?")
    if err.kind is FailureKind.CONNECTION and not err.maybe_billed and answered == 0:
        proxy = environment_proxy(url)
        if proxy is not None:  # (QA: an unreachable proxy was reported as a wrong base_url)
            return (f"cannot connect to the {role} endpoint {url} through the proxy {without_credentials(proxy)} "
                    f"that the environment names ({err.message}); is the proxy up (HTTPS_PROXY / HTTP_PROXY), or "
                    "should the host be in NO_PROXY?")
        return (f"cannot connect to the {role} endpoint {url} ({err.message}); "
                f"is the server running, and is [{section}] base_url right?")
    return None
