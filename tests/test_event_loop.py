"""The loop a run is driven on: uvloop where it is installed, the standard loop when asked or where
it is missing, and a bad choice refused before the run exists."""

from __future__ import annotations

import asyncio
import sys

import pytest

from synthledger.engine.errors import ConfigError
from synthledger.engine.run.eventloop import ENV, drive, use_uvloop
from synthledger.testing.cli_runs import Project, last_line
from synthledger.testing.server import run_in_thread


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_runs_are_driven_on_uvloop_where_it_is_installed(monkeypatch):
    pytest.importorskip("uvloop")
    monkeypatch.delenv(ENV, raising=False)
    assert drive(loop_module).startswith("uvloop")


def test_the_standard_loop_when_asked(monkeypatch):
    monkeypatch.setenv(ENV, "asyncio")
    assert drive(loop_module).startswith("asyncio")


def test_without_uvloop_the_standard_loop_runs_unless_uvloop_was_insisted_on(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets where it is not installed
    monkeypatch.delenv(ENV, raising=False)
    assert drive(loop_module).startswith("asyncio")
    monkeypatch.setenv(ENV, "uvloop")
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        use_uvloop()


def test_a_bad_choice_fails_the_command_before_the_run_exists(tmp_path, monkeypatch):
    with run_in_thread() as srv:
        project = Project(tmp_path, srv.url)
        config = project.write()
        monkeypatch.setenv(ENV, "tokio")
        res = project.generate(config)
        assert res.returncode != 0
        assert f"{ENV}='tokio' is not an event loop" in res.stderr and "Traceback" not in res.stderr
        assert srv.stats()["received"] == 0
        assert project.events("run_started") == []

        monkeypatch.setenv(ENV, "asyncio")  # the same project runs on the standard loop
        res = project.generate(config)
        assert res.returncode == 0, res.stderr
        assert last_line(res)[1] == "budget_exhausted"  # 20 queries asked and answered


def test_a_time_limit_raises_timeout_and_lets_a_run_stopping_through(monkeypatch):
    import anyio

    from synthledger.engine.run.eventloop import time_limit

    monkeypatch.delenv(ENV, raising=False)

    async def expires() -> str:
        try:
            async with time_limit(0.05):
                await anyio.sleep(5)
        except TimeoutError:
            return "timed out"
        return "not stopped"

    async def cancelled_from_outside() -> str:
        seen = []
        with anyio.move_on_after(0.05) as scope:  # the run stopping, not this attempt's deadline
            try:
                async with time_limit(5):
                    await anyio.sleep(5)
            except TimeoutError:
                seen.append("timeout")
            except anyio.get_cancelled_exc_class():
                seen.append("cancelled")
                raise
        return f"{seen} {scope.cancelled_caught}"

    assert drive(expires) == "timed out"
    assert drive(cancelled_from_outside) == "['cancelled'] True"


def test_the_time_limit_before_python_3_11_is_anyio_s_and_behaves_the_same():
    import anyio

    from synthledger.engine.run import eventloop

    async def expires() -> str:
        try:
            async with eventloop._fail_after(0.05):
                await anyio.sleep(5)
        except TimeoutError:
            return "timed out"
        return "not stopped"

    assert drive(expires) == "timed out"
