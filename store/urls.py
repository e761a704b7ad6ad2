"""Store URLs: which one applies, what a user is shown of it, and what each backend needs.

Any SQLAlchemy URL works. `postgresql://` and `postgres://` mean PostgreSQL through psycopg 3 (the
`postgres` extra), the one PostgreSQL driver we test; a URL naming another driver is used as given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote_plus

from ..engine.redact import CREDENTIAL_PARAMS
from .errors import StoreError

DEFAULT_DIR = ".synthledger"
ENV_STORE = "SYNTHLEDGER_STORE"
ENV_BUSY_TIMEOUT = "SYNTHLEDGER_BUSY_TIMEOUT"
DEFAULT_BUSY_TIMEOUT_S = 10.0


def default_url() -> str:
    return f"sqlite:///{Path(DEFAULT_DIR) / 'synthledger.db'}"


def resolve_url(url: str | None) -> str:
    """Explicit URL, else $SYNTHLEDGER_STORE, else the project-local data directory."""
    return normalize(url or os.environ.get(ENV_STORE) or default_url())


def normalize(url: str) -> str:
    """The SQLAlchemy URL a user means. A bare path (no `scheme://`) is a SQLite file: that is how
    every command prints a SQLite store, so it is what a user copies back into `--store`."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if "://" not in url:
        return f"sqlite:///{os.path.expanduser(url)}"
    return url


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names; None for a database in memory (`sqlite://`, `sqlite:///:memory:`)
    and for any other backend."""
    if not url.startswith("sqlite") or ":///" not in url:
        return None
    path = url.split(":///", 1)[1].split("?", 1)[0]
    return None if not path or path == ":memory:" else path


def in_memory(url: str) -> bool:
    """A SQLite database that lives only as long as its connection."""
    return url.startswith("sqlite") and sqlite_file(url) is None


def display(url: str) -> str:
    """The URL as it may appear in a message or a log: any password replaced by ***, in the user
    info and in the query (`?host=/tmp/pg&password=...`, which libpq reads as well). Everything else
    reads as written, the user name included: re-rendering the URL (SQLAlchemy's) percent-encoded
    its query (`host=%2Ftmp%2Fx`) only when a password was masked, so one store read two ways.
    Where the user info cannot be read as written (`userinfo_problem`), all after the user is masked."""
    if userinfo_problem(url) is not None:
        head, _, rest = url.partition("://")
        before_query, mark, query = rest.partition("?")
        userinfo, _, host = before_query.rpartition("@")
        user = userinfo.split(":", 1)[0]
        shown = f"{user}:***" if "@" not in user and "/" not in user else "***"
        return _mask_query(f"{head}://{shown}@{host}{mark}{query}")
    m = _USERINFO.match(url)
    if m is not None and m["password"]:
        url = f"{m['head']}:***@{url[m.end():]}"
    return _mask_query(url)


def userinfo_problem(url: str) -> str | None:
    """Why a database URL's user or password cannot be read as written: an unencoded `@` or `/` in it
    splits it in the wrong place, and SQLAlchemy or the driver then read part of the password as the
    host, port or database, and print it in their errors (QA: `invalid literal for int() with base
    10: 'w%40rd@127.0.0.1:5439'`). None for a SQLite URL or one that reads as written."""
    head, sep, rest = url.partition("://")
    if not sep or head.startswith("sqlite"):
        return None
    before_query = rest.split("?", 1)[0]
    userinfo = before_query.rpartition("@")[0]
    if "@" in userinfo or "/" in userinfo:
        return "its user name or password holds an unencoded '@' or '/': percent-encode them (%40, %2F)"
    return None


# `scheme://user:password@`, read as SQLAlchemy reads it (the user up to the first `:` or `/`, the
# password up to an `@`), except that a password holding an unencoded `@` is masked whole
# (`p@ss@host`: SQLAlchemy would take `ss@host` for the host, and that is half the password).
_USERINFO = re.compile(r"(?P<head>[^:/?#\s]*://[^:/]*):(?P<password>[^@]*(?:@[^@/?]*(?=@))*)@")


def _mask_query(url: str) -> str:
    """`url` with the value of every query parameter that carries a credential replaced by ***: the
    names the run config's URL check refuses (see engine/redact.py), password and sslpassword
    among them."""
    head, sep, query = url.partition("?")
    if not sep:
        return url
    return f"{head}?{'&'.join(_mask_param(p) for p in query.split('&'))}"


def _mask_param(param: str) -> str:
    name, eq, value = param.partition("=")
    return f"{name}=***" if eq and value and CREDENTIAL_PARAMS.match(unquote_plus(name)) else param


def busy_timeout_s() -> float:
    """How long to wait for a lock another connection holds ($SYNTHLEDGER_BUSY_TIMEOUT, seconds)."""
    raw = os.environ.get(ENV_BUSY_TIMEOUT)
    if raw is None or raw.strip() == "":
        return DEFAULT_BUSY_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise StoreError(f"{ENV_BUSY_TIMEOUT} must be a number of seconds >= 0 (got {raw!r})")
    return value


def check_driver(url: str) -> None:
    """A PostgreSQL URL without its driver installed: say which extra brings it, in one line."""
    if not url.startswith("postgresql+psycopg"):
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise StoreError(f"store {display(url)} is PostgreSQL, which needs the psycopg driver; install it with: "
                         "pip install 'synthledger[postgres]'") from None
