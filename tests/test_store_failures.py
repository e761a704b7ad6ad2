"""A store that cannot be written: a disk that fills mid-run, a folder that is read-only.

Each must end in one clear line (which store, why, that what was recorded is kept), no traceback,
nothing settled lost, and `generate --resume` once the store can be written again completes the
run exactly: spent == budget, audit ok, one exported row per settled answer, no pair twice.

The disk-full case uses a size-capped tmpfs, which needs root and a kernel that lets this process
mount (skipped, saying so, elsewhere); the same failure is also produced without privileges by a
file-size limit (RLIMIT_FSIZE: Python ignores SIGXFSZ, so the write fails with EFBIG).
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from synthledger.testing.projects import write_project
from synthledger.testing.reliability import ServerProcess, check_run_exact, fork_cli, run_events


@pytest.fixture(scope="module")
def server():
    with ServerProcess() as srv:
        yield srv


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path`, or the test is skipped with the reason."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-capped tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    res = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _one_clean_line(res) -> str:
    assert res.rc == 2, res
    return res.error_line()


def _settled(db: Path) -> set[str]:
    return {p["query_id"] for _, t, p, _ in run_events(db) if t == "query_settled"}


def _fill_then_resume(tmp: Path, url: str, store_dir: Path, make_room, before=None) -> None:
    budget = 200
    config = write_project(tmp, url, seeds=6, queries=budget, extra="\n[limits]\nmax_concurrency = 4\n")
    store = f"sqlite:///{store_dir / 'store.db'}"
    args = ["generate", "--config", str(config), "--no-progress", "--store", store]
    full = fork_cli(args, cwd=tmp, before=before)
    line = _one_clean_line(full)
    assert "cannot write to the store" in line and "is kept" in line and "generate --resume" in line, line
    settled = _settled(store_dir / "store.db")
    assert 0 < len(settled) < budget, "the store did not fill mid-run"
    make_room()
    resumed = fork_cli([*args, "--resume"], cwd=tmp)
    assert resumed.rc == 0 and resumed.last_line()[2] == "budget_exhausted", resumed
    result = check_run_exact(store, resumed.last_line()[1], budget)
    assert settled <= set(result["settled"]), "answers settled before the disk filled were lost"


def test_a_full_disk_mid_run_stops_cleanly_and_a_resume_completes_exactly(tmp_path, server):
    with tmpfs(tmp_path / "small", "512k") as mnt:
        def make_room() -> None:
            res = _mount("-o", "remount,size=64m", str(mnt))
            assert res.returncode == 0, res.stderr

        _fill_then_resume(tmp_path, server.url, mnt, make_room)


def test_a_file_size_limit_mid_run_stops_cleanly_and_a_resume_completes_exactly(tmp_path, server):
    def limit() -> None:  # in the child only: its writes past 300 kB fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    _fill_then_resume(tmp_path, server.url, tmp_path / "store", lambda: None, before=limit)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make `folder` read-only for this process: a read-only remount of a tmpfs for root (for whom
    file modes mean nothing), the file modes otherwise."""
    if os.geteuid() == 0:
        res = _mount("-o", "remount,ro", str(folder))
        assert res.returncode == 0, res.stderr
        try:
            yield
        finally:
            assert _mount("-o", "remount,rw", str(folder)).returncode == 0
        return
    modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
    for p in modes:
        p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))


def test_a_read_only_store_folder_refuses_in_one_line_and_loses_nothing(tmp_path, server):
    ctx = tmpfs(tmp_path / "st", "64m") if os.geteuid() == 0 else contextlib.nullcontext(tmp_path / "st")
    with ctx as folder:
        folder.mkdir(exist_ok=True)
        config = write_project(tmp_path, server.url, seeds=6, queries=6)
        store = f"sqlite:///{folder / 'store.db'}"
        args = ["generate", "--config", str(config), "--no-progress", "--store", store]
        first = fork_cli(args, cwd=tmp_path)
        assert first.rc == 0, first
        run_id = first.last_line()[1]
        before = _settled(folder / "store.db")
        with read_only(folder):
            more = fork_cli([*args, "--run", run_id, "--set", "budget.queries=12"], cwd=tmp_path)
            line = _one_clean_line(more)  # which store, and why
            assert str(folder / "store.db") in line and "readonly" in line.replace("-", ""), line
            fresh = fork_cli([*args, "--set", "run.name=other"], cwd=tmp_path)
            line = _one_clean_line(fresh)
            assert str(folder / "store.db") in line and "readonly" in line.replace("-", ""), line
            audit = fork_cli(["audit", run_id, "--store", store], cwd=tmp_path)  # reading still works
            assert audit.rc == 0 and "audit ok" in audit.stdout, audit
        assert _settled(folder / "store.db") == before
        done = fork_cli([*args, "--run", run_id, "--set", "budget.queries=12"], cwd=tmp_path)
        assert done.rc == 0 and done.last_line()[2] == "budget_exhausted", done
        check_run_exact(store, run_id, 12)
