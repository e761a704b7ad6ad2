"""Secrets never leave the process: one scrubber for everything written out, one check for configs.

A key reaches output in ways no single code path controls: a 401 body that echoes it (some
OpenAI-compatible servers and gateways do) flows into an attempt's message, the run's final
message and stderr; a credential typed into a header or a URL would be recorded with the config.
So the values this process knows to be secret are registered where they are read (the resolved API
keys, header values taken from the environment), and `scrub` replaces them, and anything shaped
like a credential (URL userinfo, key-ish query parameters, bearer tokens, `sk-...` keys), in any
text or JSON-like value. It runs at the boundaries where text leaves the process: the event writer
(everything stored, hence every `events`, `show` and export) and the CLI's error lines.

Configs are checked instead of scrubbed: a credential written into `extra_headers` or `base_url` is
refused with a pointer to the `*_env` settings, because the config is recorded verbatim.
"""

from __future__ import annotations

import html
import re
import threading
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

REDACTED = "[REDACTED]"
# A registered value shorter than this would scrub ordinary words out of the data.
MIN_SECRET_LEN = 6

# Header names that carry credentials. Compared lower-cased; anything containing one of the
# fragments below counts too (x-my-gateway-token, ocp-apim-subscription-key, ...).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "apikey",
                                "x-goog-api-key", "cookie", "x-auth-token", "ocp-apim-subscription-key"})
_CREDENTIAL_FRAGMENTS = ("auth", "key", "token", "secret", "password", "cookie", "signature")
# Query parameters that carry credentials in URLs (`?api_key=...`, `&key=...`, `?sig=...`).
CREDENTIAL_PARAMS = re.compile(r"^(?:api[_-]?key|key|token|access[_-]?token|auth|secret|password|passwd|sig|"
                               r"signature|x-api-key|subscription-key|code)$", re.I)

# Each generic pattern is (?P<kN>what stays) followed by what is replaced.
_GENERIC = [
    # a URL's password: scheme://user:pass@host (the user and host stay; an already masked
    # `user:***@`, as store URLs are displayed, is left alone)
    r"(?P<k0>://[^/\s@:\"'<>]*:)(?!\*+@)[^/\s@\"'<>]+(?=@)",
    # a URL's userinfo that is a token on its own: scheme://token@host
    r"(?P<k5>://)[^/\s@:\"'<>]+(?=@)",
    # key-ish query parameters (the name stays)
    r"(?P<k1>(?<=[?&])(?i:api[_-]?key|key|token|access[_-]?token|auth|secret|password|passwd|sig|signature)=)"
    r"[^&#\s\"'<>]+",
    # bearer tokens in any header dump or message
    r"(?P<k2>(?i:bearer)\s+)[A-Za-z0-9._~+/=-]{6,}",
    # values of credential headers written as text (x-api-key: ..., "api-key": "...")
    r"(?P<k3>(?i:\b(?:x-api-key|api-key|x-goog-api-key))[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+",
    # provider key formats (OpenAI, Anthropic)
    r"(?P<k4>)\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}",
]

_lock = threading.Lock()
_known: set[str] = set()
_pattern: re.Pattern[str] = re.compile("|".join(_GENERIC))


def _compile() -> re.Pattern[str]:
    # Longest first, so a key that contains another registered value is replaced whole.
    literal = [re.escape(s) for s in sorted(_known, key=len, reverse=True)]
    return re.compile("|".join(literal + _GENERIC))


def register(value: str | None) -> None:
    """Remember a value that must never be written anywhere (an API key, a credential header)."""
    global _pattern, _b_known
    if not value or len(value) < MIN_SECRET_LEN:
        return
    with _lock:
        if value in _known:
            return
        _known.add(value)
        _pattern = _compile()
        _b_known = tuple(k.encode() for k in _known)


def known_secrets() -> frozenset[str]:
    return frozenset(_known)


def _replace(m: re.Match[str]) -> str:
    keep = m.group(m.lastgroup) if m.lastgroup else ""
    return keep + REDACTED


# Literals that every generic pattern needs: a text without any of them (nearly all text) is passed
# by a few substring searches, far cheaper than running the combined pattern over it.
_HINTS = ("://", "sk-", "earer", "EARER", "-key", "-KEY", "-Key")
_B_HINTS = tuple(h.encode() for h in _HINTS)
_QUERY = re.compile(r"[?&](?i:api[_-]?key|key|token|access[_-]?token|auth|secret|password|passwd|sig|signature)=")
_B_QUERY = re.compile(_QUERY.pattern.encode())
_b_known: tuple[bytes, ...] = ()


def _suspect(text: str) -> bool:
    for h in _HINTS:
        if h in text:
            return True
    if "=" in text and _QUERY.search(text):
        return True
    return any(s in text for s in _known)


def _suspect_bytes(raw: bytes, shapes: bool) -> bool:
    for s in _b_known:  # (a loop, not any(): this runs for every event, and a generator costs more)
        if s in raw:
            return True
    if not shapes:
        return False
    for h in _B_HINTS:
        if h in raw:
            return True
    return b"=" in raw and _B_QUERY.search(raw) is not None


def scrub(text: str) -> str:
    """`text` with every known secret and credential-shaped part replaced by [REDACTED]."""
    if not text or not _suspect(text):
        return text
    return _pattern.sub(_replace, text)


def scrub_payload(payload: dict[str, Any], *, shapes: bool = True) -> dict[str, Any]:
    """An event payload with every known secret scrubbed, and (with `shapes`) every credential-shaped
    part. One serialisation and a few substring searches over it decide that (nearly always) nothing
    needs scrubbing; only then is the payload walked. `shapes=False` is for bulk data (prompts, the
    teacher's answers), where a key-shaped string is data and scanning for shapes would cost on every
    query: a key this process knows is still removed from it."""
    if not _suspect_bytes(orjson.dumps(payload), shapes):
        return payload
    if not shapes:
        return _scrub_known(payload)
    return _scrub_items(payload, _scrub_part)


def _scrub_part(value: Any) -> Any:
    """A large part (a run's seeds, in `run_started`) gets the payload's quick test before it is
    walked string by string: a config key named like a credential flags the whole payload, and
    walking 4,000 seeds for it cost a twentieth of start-up."""
    if isinstance(value, (dict, list)) and len(value) > 16 and not _suspect_bytes(orjson.dumps(value), True):
        return value
    return scrub_value(value)


def _scrub_items(value: dict[str, Any], scrub_one: Any) -> dict[str, Any]:
    """`value` with `scrub_one` applied to each item; the very same dict when none changed."""
    out = None
    for k, v in value.items():
        new = scrub_one(v)
        if new is not v:
            if out is None:
                out = dict(value)
            out[k] = new
    return value if out is None else out


def _scrub_known(value: Any) -> Any:
    if isinstance(value, str):
        return _known_pattern().sub(REDACTED, value) if any(s in value for s in _known) else value
    if isinstance(value, dict):
        return {k: _scrub_known(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_known(v) for v in value]
    return value


def _known_pattern() -> re.Pattern[str]:
    return re.compile("|".join(re.escape(s) for s in sorted(_known, key=len, reverse=True)))


def scrub_value(value: Any) -> Any:
    """A JSON-like value (dict/list/str/...) with every string scrubbed. Returns the very same object
    when nothing needed scrubbing, so the common case allocates nothing."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return _scrub_items(value, scrub_value)
    if isinstance(value, (list, tuple)):
        items = [scrub_value(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items) if isinstance(value, tuple) else items
    return value


# ---- excerpts of what a provider sent, for messages -------------------------------------------------

# A markup tag (`<h1>`, `</body>`, `<!DOCTYPE html>`, `<br/>`), or one cut off by an earlier
# truncation at the very end; a bare `<` in prose ("a < b") is not one.
_TAG = re.compile(r"<[A-Za-z!/?][^<>]*(?:>|$)")
_BLANK = re.compile(r"[\s\x00-\x1f\x7f]+")


def one_line(text: str | None, limit: int = 200, *, keep_tags: bool = False) -> str:
    """A provider's words or body as one short line for a message: markup tags dropped (unless
    `keep_tags`: the start of a page that came back where a JSON reply was due says more with its
    `<html>`), entities decoded, every run of whitespace (newlines too) one space, secrets
    scrubbed, and at most `limit` characters (`...` marks a cut). An error page from a gateway
    (nginx's 502 is eight lines of HTML) would otherwise spill the run's message over many lines."""
    if not text:
        return ""
    if not keep_tags and "<" in text:
        text = _TAG.sub(" ", text)
    if "&" in text and not keep_tags:
        text = html.unescape(text)
    text = scrub(_BLANK.sub(" ", text).strip())  # (scrubbed before the cut: half a key is still a key)
    if len(text) > limit:
        text = text[: max(0, limit - 3)].rstrip() + "..."
    return text


# ---- configs: refuse credentials written into them -------------------------------------------------

ENV_HINT = ("put the credential in an environment variable and name it with api_key_env "
            "(or extra_headers_env for a header)")


def is_credential_header(name: str) -> bool:
    low = name.strip().lower()
    return low in CREDENTIAL_HEADERS or any(f in low for f in _CREDENTIAL_FRAGMENTS)


def url_credentials(url: str) -> str | None:
    """What in `url` is a credential (userinfo, a key-ish query parameter), or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None:
        return "a user name or password before the host"
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if CREDENTIAL_PARAMS.match(name):
            return f"the query parameter {name!r}"
    return None


def header_credentials(headers: Any) -> list[str]:
    """Names of the headers in a mapping that carry credentials."""
    if not isinstance(headers, dict):
        return []
    return [str(k) for k in headers if is_credential_header(str(k))]
