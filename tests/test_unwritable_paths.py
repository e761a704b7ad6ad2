"""Paths the operating system refuses, through the real command line: an export or a new store under
a file, in a read-only folder, the default store from a read-only working directory, and a store
that can only be read (an archived copy, a read-only mount).

Each refusal is one `error:` line naming the path the user gave (never a temporary name) and the
OS's reason, exit 2, nothing left behind; a store that can only be read is still read by every
command that only reads, and a command that writes to it says why it cannot.

Tests run as root, for whom file modes mean nothing: a read-only folder is a tmpfs remounted
read-only (skipped, saying so, where mounting is not permitted); as another user, file modes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("SYNTHLEDGER_STORE", None)
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The single line a refused command prints: exit 2, no traceback, nothing else on stderr but
    the notes a run starts with (which store, which run it resumes)."""
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("store ", "resuming run "))]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert ".tmp" not in lines[0], lines[0]  # never the writer's temporary name
    return lines[0]


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """`folder` (created, possibly holding files already) made read-only for the block: for root a
    tmpfs with the files copied in and remounted read-only, for anyone else the file modes."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
        try:
            yield folder
        finally:
            for p, mode in modes.items():
                p.chmod(stat.S_IMODE(mode))
        return
    keep = folder.with_name(folder.name + ".files")
    shutil.copytree(folder, keep)
    res = _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder))
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {res.stderr.strip()}")
    try:
        shutil.copytree(keep, folder, dirs_exist_ok=True)
        assert _mount("-o", "remount,ro", str(folder)).returncode == 0
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One real `generate` run in a file store: (project folder, store path, run id)."""
    project = tmp_path_factory.mktemp("paths")
    with run_in_thread() as srv:
        write_project(project, srv.url, name="paths", seeds=3, queries=4)
        r = cli("generate", "-c", "run.toml", "--no-progress", "--store", "store.db", cwd=project)
        assert r.returncode == 0, r.stderr
    run_id = re.search(r"run ([0-9a-f]{12}) ", r.stdout).group(1)
    con = sqlite3.connect(project / "store.db")
    con.execute("SELECT count(*) FROM runs").fetchall()
    con.close()  # fold the write-ahead log in: the file alone is the store
    assert not (project / "store.db-wal").exists()
    return project, project / "store.db", run_id


@pytest.fixture(scope="module")
def server():
    with run_in_thread() as srv:
        yield srv


# ---- exports ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "hf"])
def test_an_export_under_a_file_is_one_line_naming_the_path(recorded, tmp_path, fmt):
    project, store, run_id = recorded
    (tmp_path / "afile").write_text("keep me\n")
    for out in ("afile/o.jsonl", "afile/deeper/o.jsonl"):
        r = cli("export", run_id, "--store", str(store), "--format", fmt, "--out", out, cwd=tmp_path)
        line = one_error_line(r)
        assert f"cannot write {out}" in line and "afile is a file, not a folder" in line, line
    assert files_in(tmp_path) == {"afile": b"keep me\n"}


@pytest.mark.parametrize("fmt", ["jsonl", "hf"])
def test_an_export_into_a_read_only_folder_is_one_line_naming_the_path(recorded, tmp_path, fmt):
    project, store, run_id = recorded
    with read_only_folder(tmp_path / "ro") as ro:
        for out in (ro / "o.jsonl", ro / "sub" / "o.jsonl"):
            r = cli("export", run_id, "--store", str(store), "--format", fmt, "--out", str(out), cwd=tmp_path)
            line = one_error_line(r)
            assert f"cannot write {out}" in line, line
            assert re.search(r"read-only file system|permission denied", line, re.I), line
        assert files_in(ro) == {}


# ---- a store where none can be created ------------------------------------------------------------------


def test_a_new_store_under_a_file_is_one_line_naming_the_path(server, tmp_path):
    write_project(tmp_path, server.url, seeds=2, queries=2)
    (tmp_path / "afile").write_text("")
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", "afile/st.db", cwd=tmp_path)
    line = one_error_line(r)
    assert "cannot create store afile/st.db" in line and "afile is a file, not a folder" in line, line
    assert server.stats()["answered"] == 0


def test_a_new_store_in_a_read_only_folder_is_one_line_naming_the_path(server, tmp_path):
    write_project(tmp_path, server.url, seeds=2, queries=2)
    with read_only_folder(tmp_path / "ro") as ro:
        for db in (ro / "st.db", ro / "sub" / "st.db"):
            r = cli("generate", "-c", "run.toml", "--no-progress", "--store", str(db), cwd=tmp_path)
            line = one_error_line(r)
            assert f"cannot create store {db}" in line, line
            assert re.search(r"read-only file system|permission denied", line, re.I), line
        assert files_in(ro) == {}
    assert server.stats()["answered"] == 0


def test_the_default_store_from_a_read_only_working_directory_is_one_line(server, tmp_path):
    write_project(tmp_path / "ro", server.url, seeds=2, queries=2)
    with read_only_folder(tmp_path / "ro") as ro:
        before = files_in(ro)
        r = cli("generate", "-c", "run.toml", "--no-progress", cwd=ro)
        line = one_error_line(r)
        assert "cannot create store .synthledger/synthledger.db" in line, line
        assert re.search(r"read-only file system|permission denied", line, re.I), line
        assert files_in(ro) == before
    assert server.stats()["answered"] == 0


# ---- a store that can only be read ---------------------------------------------------------------------


def test_a_store_that_cannot_be_written_is_still_read(recorded, tmp_path):
    project, store, run_id = recorded
    (tmp_path / "archive").mkdir()
    shutil.copy(store, tmp_path / "archive" / "store.db")
    with read_only_folder(tmp_path / "archive") as archive:
        db = str(archive / "store.db")
        before = files_in(archive)
        runs = cli("runs", "--json", "--store", db, cwd=tmp_path)
        assert runs.returncode == 0 and [r["id"] for r in json.loads(runs.stdout)] == [run_id], runs.stderr
        shown = cli("show", run_id, "--json", "--store", db, cwd=tmp_path)
        assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == run_id, shown.stderr
        audit = cli("audit", run_id, "--store", db, cwd=tmp_path)
        assert audit.returncode == 0 and "audit ok" in audit.stdout, audit.stderr
        events = cli("events", run_id, "--limit", "2", "--store", db, cwd=tmp_path)
        assert events.returncode == 0 and len(events.stdout.splitlines()) == 2, events.stderr
        out = tmp_path / "rows.jsonl"
        export = cli("export", run_id, "--format", "jsonl", "--out", str(out), "--store", db, cwd=tmp_path)
        assert export.returncode == 0 and out.read_text().count("\n") >= 1, export.stderr
        # a command that writes says which store and why it cannot
        more = cli("generate", "--run", run_id, "--set", "budget.queries=8", "--no-progress", "--store", db,
                   cwd=tmp_path)
        line = one_error_line(more)
        assert db in line and "readonly" in line.replace("-", "").lower(), line
        # and its runs can be copied out of it
        copy = cli("store", "copy", db, str(tmp_path / "copy.db"), cwd=tmp_path)
        assert copy.returncode == 0 and f"copied run {run_id}" in copy.stdout, copy.stderr
        assert files_in(archive) == before


def test_a_read_only_store_whose_log_was_never_folded_in_is_refused_not_misread(recorded, tmp_path):
    """Without its `-shm` index SQLite cannot read a write-ahead log read-only; reading the database
    file alone would silently miss the events in the log, so that is one line saying what to do."""
    project, store, run_id = recorded
    live = tmp_path / "live.db"
    shutil.copy(store, live)
    writer = sqlite3.connect(live)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE runs SET name = 'renamed'")  # lands in the log only
    writer.commit()
    (tmp_path / "archive").mkdir()
    db = tmp_path / "archive" / "store.db"
    shutil.copy(live, db)  # the database file and its log, without the index its writer keeps
    shutil.copy(f"{live}-wal", f"{db}-wal")
    writer.close()
    assert not Path(f"{db}-shm").exists()
    with read_only_folder(tmp_path / "archive") as archive:
        r = cli("runs", "--json", "--store", str(archive / "store.db"), cwd=tmp_path)
        line = one_error_line(r)
        assert str(archive / "store.db") in line and "store.db-wal" in line, line
