"""Shared fixtures: a throwaway PostgreSQL server for the whole session, a fresh database per test,
and `store_url`, which runs a test once on SQLite and once on PostgreSQL.

The server comes from testing/postgres.py (initdb into a temp folder, unix socket only, as the
`postgres` user when we are root). Where it cannot start, PostgreSQL tests are skipped with the
reason, except in CI (CI=true), where a skipped backend is a failure: CI must prove both.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

_counter = itertools.count(1)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def pg_cluster():
    from synthledger.testing.postgres import PgCluster, PgUnavailable

    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install 'synthledger[postgres]')")
    try:
        cluster = PgCluster().start()
    except PgUnavailable as exc:
        _unavailable(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """A new, empty database on the session's server."""
    return pg_cluster.create_database(f"t{next(_counter)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_ambient_proxy(monkeypatch):
    """Tests talk to servers on 127.0.0.1: a proxy the machine's environment names (a CI runner's,
    for the package registries) must not route them, now that ALL_PROXY counts as the SDKs count it.
    Tests of proxies set their own."""
    for name in list(os.environ):
        if name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)
