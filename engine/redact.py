"""Secrets never leave the process: one scrubber for everything written out, one check for configs.

A key reaches output in ways no single code path controls: a 401 body that echoes it (some
OpenAI-compatible servers and gateways do) flows into an attempt's message, the run's final
message and stderr; a credential typed into a header or a URL would be recorded with the config.
So the values this process knows to be secret are registered where they are read (the resolved API
keys, header values taken from the environment), and `scrub` replaces them (in every form a
provider's body or our own one-line excerpt of it may give them: JSON-escaped, HTML-escaped,
whitespace collapsed), and anything shaped like a credential (URL userinfo, key-ish query
parameters, bearer tokens, provider key formats such as `sk-...` or `gsk_...`), in any text or
JSON-like value. It runs at the boundaries where text leaves the process: the event writer
(everything stored, hence every `events`, `show` and export) and the CLI's error lines.

Configs are checked instead of scrubbed: a credential written into `extra_headers` or `base_url` is
refused with a pointer to the `*_env` settings, because the config is recorded verbatim.
"""

from __future__ import annotations

import html
import json
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
# Query parameters that carry credentials, by name: case and `-`/`_` do not matter (`X-Amz-Signature`,
# `client_secret`, `access-key`, `apiKey`), and any name ending in token, secret, password, signature or
# credential counts (`private_token`, `x-amz-security-token`, `sslpassword`). A name is read whole, so
# `max_tokens=` or `keyword=` is data.
_PARAM_NAME = (r"(?:(?:x[-_]?)?api[-_]?key|key|(?:access|secret|private|subscription|client)[-_]?key|auth|"
               r"authorization|code|sig|passwd|pwd|[A-Za-z0-9_-]*?(?:token|secret|password|signature|credentials?))")
CREDENTIAL_PARAMS = re.compile(rf"^(?i:{_PARAM_NAME})$")

# Provider key formats (OpenAI, Anthropic, Groq, GitHub, Google, Hugging Face, xAI, AWS access key ids),
# each at a realistic length, so a word or identifier that merely starts like one (`hf_model`) stays.
KEY_SHAPES = (r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}", r"\bgsk_[A-Za-z0-9]{20,}", r"\bgh[pousr]_[A-Za-z0-9]{30,}",
              r"\bgithub_pat_[A-Za-z0-9_]{40,}", r"\bAIza[0-9A-Za-z_-]{30,}", r"\bhf_[A-Za-z0-9]{30,}",
              r"\bxai-[A-Za-z0-9]{30,}", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_KEY_SHAPE = re.compile("|".join(KEY_SHAPES))

# Each generic pattern is (?P<kN>what stays) followed by what is replaced.
_GENERIC = [
    # a URL's password: scheme://user:pass@host (the user and host stay; an already masked
    # `user:***@`, as store URLs are displayed, is left alone; a password with an unencoded `@`
    # goes whole)
    r"(?P<k0>://[^/\s@:\"'<>]*:)(?!\*+@)[^/\s@\"'<>]+(?:@[^/\s@\"'<>?]*(?=@))*(?=@)",
    # a URL's userinfo that is a token on its own: https://token@host (but see `_is_db_user`)
    r"(?P<k5>://)[^/\s@:\"'<>]+(?=@)",
    # key-ish query parameters (the name stays; an already masked `password=***` is left alone)
    rf"(?P<k1>(?<=[?&])(?i:{_PARAM_NAME})=)(?!\*+(?:[&#\s\"'<>]|$))[^&#\s\"'<>]+",
    # bearer tokens in any header dump or message
    r"(?P<k2>(?i:bearer)\s+)[A-Za-z0-9._~+/=-]{6,}",
    # values of credential headers written as text (x-api-key: ..., "api-key": "...")
    r"(?P<k3>(?i:\b(?:x-api-key|api-key|x-goog-api-key))[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+",
    # provider key formats
    rf"(?P<k4>)(?:{'|'.join(KEY_SHAPES)})",
]

# A markup tag (`<h1>`, `</body>`, `<!DOCTYPE html>`, `<br/>`), or one cut off by an earlier
# truncation at the very end; a bare `<` in prose ("a < b") is not one.
_TAG = re.compile(r"<[A-Za-z!/?][^<>]*(?:>|$)")
_BLANK = re.compile(r"[\s\x00-\x1f\x7f]+")

_lock = threading.Lock()
_known: set[str] = set()
_pattern: re.Pattern[str] = re.compile("|".join(_GENERIC))
# Every form of every registered value (see `_forms`), and the shortest of them that the others
# contain: finding one of those is what makes a text worth scrubbing.
_forms_all: frozenset[str] = frozenset()
_least: tuple[str, ...] = ()
_b_known: tuple[bytes, ...] = ()  # `_least` as orjson writes it inside a JSON string
_known_re: re.Pattern[str] | None = None


def _compile() -> re.Pattern[str]:
    # Longest first, so a key that contains another registered value is replaced whole.
    return re.compile("|".join(_literals() + _GENERIC))


def _literals() -> list[str]:
    return [re.escape(s) for s in sorted(_forms_all, key=len, reverse=True)]


def _json_forms(value: str) -> set[str]:
    """`value` as it reads inside a JSON string: a provider's error body that echoes a key escapes
    `"` and `\\` (and control characters, and maybe non-ASCII), and PHP's json_encode writes `/` as `\\/`."""
    out = set()
    for escaped in (json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]):
        out |= {escaped, escaped.replace("/", "\\/")}
    return out


def _text_forms(value: str) -> set[str]:
    """`value` as it reads after `one_line` made a provider's words one line (tags dropped, entities
    decoded, whitespace collapsed: `tab\\tkey` becomes `tab key`), and as an HTML page would carry it."""
    flat = _BLANK.sub(" ", value).strip()
    tagless = _BLANK.sub(" ", html.unescape(_TAG.sub(" ", value))).strip()
    return {flat, tagless, html.unescape(value), html.escape(value), html.escape(value, quote=False)}


def _forms(value: str) -> set[str]:
    """Every form of a secret worth looking for, computed once when it is registered (`scrub` runs on
    every event: it only searches). A form shorter than MIN_SECRET_LEN would blank ordinary words."""
    forms = {value} | _json_forms(value) | _text_forms(value)
    forms |= {j for t in _text_forms(value) for j in _json_forms(t)}
    return {f for f in forms if len(f) >= MIN_SECRET_LEN}


def _shortest(forms: frozenset[str]) -> tuple[str, ...]:
    """The forms that contain no other: a text holding any form holds one of these."""
    ordered = sorted(forms, key=len)
    kept: list[str] = []
    for f in ordered:
        if not any(k in f for k in kept):
            kept.append(f)
    return tuple(kept)


def register(value: str | None) -> None:
    """Remember a value that must never be written anywhere (an API key, a credential header)."""
    global _pattern, _forms_all, _least, _b_known, _known_re
    if not value or len(value) < MIN_SECRET_LEN:
        return
    with _lock:
        if value in _known:
            return
        _known.add(value)
        _forms_all = _forms_all | _forms(value)
        _least = _shortest(_forms_all)
        # (orjson escapes `"`, `\` and control characters inside a string: the bytes of a payload
        # hold that, not the raw form)
        _b_known = tuple(dict.fromkeys(orjson.dumps(f)[1:-1] for f in _least))
        _known_re = re.compile("|".join(_literals()))
        _pattern = _compile()


def known_secrets() -> frozenset[str]:
    return frozenset(_known)


def _replace(m: re.Match[str]) -> str:
    keep = m.group(m.lastgroup) if m.lastgroup else ""
    if m.lastgroup == "k5" and _is_db_user(m):  # (a key or a known secret in its place still goes)
        return keep + _pattern.sub(_replace, m.group(0)[len(keep):])
    return keep + REDACTED


# A database URL's scheme (`postgresql`, `mysql+pymysql`) ending where a `://` starts.
_DB_SCHEME = re.compile(r"(?<![A-Za-z0-9+.-])(?i:postgres(?:ql)?|mysql|mariadb|mssql|oracle|cockroachdb|sqlite)"
                        r"(?:\+[A-Za-z0-9_]+)?\Z")


def _is_db_user(m: re.Match[str]) -> bool:
    """The userinfo `m` found alone before a host is a database URL's user (postgresql://alice@/db):
    there a password always follows a `:`, and a user name is no secret. Store URLs show it
    (store/urls.py), and scrubbing it here made the same store read `alice@` in one message and
    `[REDACTED]@` in the next (every CLI error line is scrubbed). Any other scheme's
    (https://TOKEN@host, git+https://TOKEN@...) goes as before. Asked only of a match, so the
    search that every suspect text gets stays as it was."""
    return _DB_SCHEME.search(m.string, max(0, m.start() - 64), m.start()) is not None


# Literals that every generic pattern needs: a text without any of them (nearly all text) is passed
# by one search, far cheaper than running the combined pattern over it.
_HINT = re.compile(r"://|sk-|earer|EARER|-key|-KEY|-Key|gsk_|gh[pousr]_|github_pat_|AIza|hf_|xai-|A[KS]IA")
_B_HINT = re.compile(_HINT.pattern.encode())
_QUERY = re.compile(rf"[?&](?i:{_PARAM_NAME})=")
_B_QUERY = re.compile(_QUERY.pattern.encode())


def _suspect(text: str) -> bool:
    if _HINT.search(text) is not None:
        return True
    if "=" in text and _QUERY.search(text):
        return True
    for s in _least:
        if s in text:
            return True
    return False


def _suspect_bytes(raw: bytes, shapes: bool) -> bool:
    # (A loop, not any(): this runs for every event, and a generator costs more. `find`, not `in`:
    # `in` first tries its operand as an integer, making and clearing a TypeError each time.)
    for s in _b_known:
        if raw.find(s) != -1:
            return True
    if not shapes:
        return False
    if _B_HINT.search(raw) is not None:
        return True
    return raw.find(b"=") != -1 and _B_QUERY.search(raw) is not None


def scrub(text: str) -> str:
    """`text` with every known secret and credential-shaped part replaced by [REDACTED]."""
    if not text or not _suspect(text):
        return text
    return _pattern.sub(_replace, text)


def scrub_payload(payload: dict[str, Any], *, shapes: bool = True, raw: bytes | None = None) -> dict[str, Any]:
    """An event payload with every known secret scrubbed, and (with `shapes`) every credential-shaped
    part. One serialisation and a few substring searches over it decide that (nearly always) nothing
    needs scrubbing; only then is the payload walked. `shapes=False` is for bulk data (prompts, the
    teacher's answers), where a key-shaped string is data and scanning for shapes would cost on every
    query: a key this process knows is still removed from it. `raw`: the payload already serialised."""
    if not _suspect_bytes(raw if raw is not None else orjson.dumps(payload), shapes):
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
        if _known_re is None or not any(s in value for s in _least):
            return value
        return _known_re.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: _scrub_known(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_known(v) for v in value]
    return value


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
    """Names of the headers in a mapping that carry credentials: by their name, or by a value shaped
    like a provider's key or a bearer token (`x-custom = "gsk_..."` is a key all the same)."""
    if not isinstance(headers, dict):
        return []
    return [str(k) for k, v in headers.items() if is_credential_header(str(k)) or is_credential_value(v)]


_BEARER_VALUE = re.compile(r"\s*bearer\s+\S{6,}", re.I)
# What a header value shaped like a credential is called in the refusals of engine/run/config.py and
# plugins/teachers/settings.py.
CREDENTIAL_VALUE = "holds a value shaped like a credential (a provider's key, a bearer token)"


def is_credential_value(value: Any) -> bool:
    """A header value shaped like a well-known provider's key, or a bearer token."""
    return isinstance(value, str) and (_KEY_SHAPE.search(value) is not None or _BEARER_VALUE.match(value) is not None)


# ---- names of environment variables: a key typed where its variable's name belongs ---------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"[^_-]+")
_SWITCH = re.compile(r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")  # a letter next to a digit
KEY_NOT_NAME = ("looks like a key rather than the name of an environment variable; put the key in an "
                "environment variable (export NAME=...) and give its name here")


def looks_like_key(value: str) -> bool:
    """`value` reads as a credential rather than a variable's name: a provider key's shape, or a long
    run where letters and digits alternate as in random text (`Xq7Zp93LmK2n...`), which the names
    people give variables (OPENAI_API_KEY, MY_GATEWAY_KEY_2, teacher_key, SOMEVERYLONGNAME123) lack."""
    if _KEY_SHAPE.search(value):
        return True
    return any(len(seg) >= 16 and len(_SWITCH.findall(seg)) >= 3 for seg in _SEGMENT.findall(value))


def env_name_problem(value: str) -> str | None:
    """Why `value` cannot be the name of an environment variable holding a credential, or None. The
    value is never repeated: when it is not a name, it may be the key itself."""
    if looks_like_key(value):
        return KEY_NOT_NAME
    if not _ENV_NAME.fullmatch(value):
        return "must be the *name* of an environment variable (like OPENAI_API_KEY), not the key itself"
    return None


def shown_env_name(name: str) -> str:
    """`name` as a message may show it: a variable's name as people write them, else a description
    (a key typed where its name belongs must not be echoed back)."""
    if env_name_problem(name) is None:
        return name
    return "named there (not shown: it is no variable's name, maybe the key itself)"
