"""A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` into a temporary folder,
listening on a unix socket only (no TCP port), stopped and removed at the end.

The server refuses to run as root, so when we are root the cluster belongs to the `postgres`
user (Debian's package creates it) and its commands run through `runuser`. Nothing here needs
Python drivers; creating databases goes through `psql` so this module imports anywhere.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["PgCluster", "PgUnavailable", "find_bindir"]

USER = "synthledger"


class PgUnavailable(RuntimeError):
    """The server binaries (or the account to run them as) are not on this machine."""


def find_bindir() -> Path:
    """Where initdb/pg_ctl/psql live: $PG_BINDIR, Debian's versioned folder, else PATH."""
    explicit = os.environ.get("PG_BINDIR")
    candidates = [explicit] if explicit else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]),
                         reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise PgUnavailable("PostgreSQL server binaries not found (initdb, pg_ctl); "
                        "install them with: apt-get install -y postgresql")


class PgCluster:
    """One server. `durable=False` (tests) turns fsync off; benchmarks keep the defaults."""

    def __init__(self, *, durable: bool = False, root: str | None = None) -> None:
        self.bindir = find_bindir()
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="slpg-", dir=root))  # short: socket paths are limited
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "server.log"
        self.as_postgres = os.geteuid() == 0
        self.started = False
        self._watchdog: subprocess.Popen | None = None

    # ---- running the server's own commands ----------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        if not self.as_postgres:
            return list(args)
        if shutil.which("runuser"):
            return ["runuser", "-u", "postgres", "--", *args]
        return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(_quote(a) for a in args)]

    def _run(self, *args: str, timeout: float = 120) -> str:
        res = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({res.returncode}): {res.stderr.strip()}\n{tail}")
        return res.stdout

    def start(self) -> "PgCluster":
        if self.as_postgres:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root and there is no `postgres` user to run the server as") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.sock.mkdir()
        if self.as_postgres:
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        opts = [f"-c listen_addresses=''", f"-c unix_socket_directories={self.sock}", "-c max_connections=200"]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", " ".join(opts), "start")
        self.started = True
        self._watchdog = self._start_watchdog()
        return self

    def _start_watchdog(self) -> subprocess.Popen:
        """A process of its own that stops the server and removes its folder once ours is gone: a
        test run killed with SIGKILL runs no cleanup, and its server would live on."""
        stop = self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.root), *stop],
                                start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self._run(str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock),
                         "-U", USER, "-d", db, "-At", "-c", sql)

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://{USER}@/{db}?host={self.sock}"

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        if self.started:
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            finally:
                self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


# Run by the watchdog: argv = owner pid, cluster folder, the stop command.
_WATCHDOG = """
import os, shutil, subprocess, sys, time
owner, root, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while True:
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        break
    except PermissionError:
        pass
    time.sleep(1)
subprocess.run(stop, capture_output=True, timeout=60)
shutil.rmtree(root, ignore_errors=True)
"""
