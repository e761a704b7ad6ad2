"""`import synthledger` as a script or a notebook uses it: generate (sync and async, also inside a
running event loop as in Jupyter), open_store with runs, events, dataset and audit — against the
real test server and a real SQLite store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import synthledger
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread


@pytest.fixture(scope="module")
def server():
    with run_in_thread() as srv:
        yield srv


@pytest.fixture
def project(tmp_path, server, monkeypatch):
    monkeypatch.delenv("SYNTHLEDGER_STORE", raising=False)
    config = write_project(tmp_path, server.url, name="api", seeds=3, queries=3)
    return config, f"sqlite:///{tmp_path / 'store.db'}"


def statuses(url: str) -> dict[str, str]:
    with synthledger.open_store(url) as st:
        return {r.name: r.status for r in st.runs()}


def test_import_is_cheap_and_torch_free():
    code = ("import sys, synthledger; heavy = [m for m in ('torch', 'datasets', 'anyio', 'sqlalchemy', 'rich') "
            "if m in sys.modules]; assert not heavy, heavy; assert callable(synthledger.generate); "
            "assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr


def test_a_program_keeps_its_own_signal_handlers_after_a_run(project):
    # A run listens for SIGINT/SIGTERM while it lasts; the event loop's cleanup left SIGTERM at the
    # default and SIGINT at Python's, so a `kill` then ended the program (an experiment training
    # after its first generation died with its run left `running`).
    import signal

    def mine(signum, frame):  # noqa: ARG001
        pass

    before = {sig: signal.signal(sig, mine) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        config, url = project
        assert synthledger.generate(config, store=url).ok
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_generate_then_browse_the_store(project):
    config, url = project
    result = synthledger.generate(config, store=url)
    assert result.ok and result.status == "budget_exhausted" and "accepted 3" in result.summary
    assert result.store_url == url
    with synthledger.open_store(result.store_url) as st:
        assert [r.id for r in st.runs()] == [result.run_id]
        events = list(st.events("api"))
        assert events[0]["type"] == "run_started" and events[-1]["type"] == "run_finished"
        assert [e["type"] for e in st.events("api", types=["query_settled"])] == ["query_settled"] * 3
        report = st.audit(result.run_id)
        assert report.ok and report.spent["queries"] == 3
        assert st.summary("api")["samples"]["accepted"] == 3
        ds = st.dataset("api")
        assert len(ds) == 3 and ds[0]["messages"][1]["role"] == "assistant"
        assert ds[0]["messages"][0]["content"] == ds[0]["question"]


def test_generate_inside_a_running_event_loop(project):
    """A notebook cell runs inside an event loop; anyio.run would refuse and leave a ghost run."""
    config, url = project

    async def cell():
        asyncio.get_running_loop()  # we are in a loop, as in Jupyter
        return synthledger.generate(config, store=url, name="in-loop")

    result = asyncio.run(cell())
    assert result.ok and statuses(url) == {"in-loop": "budget_exhausted"}


def test_agenerate_awaits_on_the_callers_loop(project):
    config, url = project

    async def main():
        first = await synthledger.agenerate(config, store=url, name="async-1")
        second = await synthledger.agenerate(config, store=url, name="async-2", overrides=["budget.queries=1"])
        return first, second

    first, second = asyncio.run(main())
    assert first.ok and second.ok and second.snapshot["spent"]["queries"] == 1
    assert statuses(url) == {"async-1": "budget_exhausted", "async-2": "budget_exhausted"}


def test_a_failure_inside_a_loop_leaves_no_ghost_running_run(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHLEDGER_STORE", raising=False)
    monkeypatch.setenv("API_TEST_KEY", "sk-wrong")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with run_in_thread(require_api_key="sk-right") as srv:
        config = write_project(tmp_path, srv.url, name="denied", seeds=2, queries=2)
        config.write_text(config.read_text().replace("max_tokens = 64", 'max_tokens = 64\napi_key_env = "API_TEST_KEY"'))

        async def cell():
            return synthledger.generate(config, store=url)

        result = asyncio.run(cell())
    assert result.status == "failed" and not result.ok
    assert statuses(url) == {"denied": "failed"}


def test_a_run_whose_loop_never_starts_is_closed_as_failed(project, monkeypatch):
    from synthledger.engine.run import runner

    config, url = project

    def broken_run(*_a, **_k):
        raise RuntimeError("event loop refused")

    monkeypatch.setattr(runner.anyio, "run", broken_run)
    with pytest.raises(RuntimeError, match="event loop refused"):
        synthledger.generate(config, store=url, name="never")
    monkeypatch.undo()
    assert statuses(url) == {"never": "failed"}
    with synthledger.open_store(url) as st:
        assert [e["type"] for e in st.events("never")] == ["run_started", "run_finished"]
        assert st.audit("never").ok


def test_errors_are_the_cli_ones_as_exceptions(project, tmp_path):
    config, url = project
    synthledger.generate(config, store=url)
    with pytest.raises(ValueError, match="run name 'api' is taken by run"):
        synthledger.generate(config, store=url)
    with pytest.raises(Exception, match="does not exist"):
        synthledger.open_store(f"sqlite:///{tmp_path / 'typo.db'}")
    assert not (tmp_path / "typo.db").exists()
    with pytest.raises(ValueError, match="budget.quries: unknown key"):
        synthledger.generate(config, store=url, name="x", overrides=["budget.quries=3"])


def test_config_as_a_dict(project, tmp_path):
    config, url = project
    import tomllib

    data = tomllib.loads(config.read_text())
    data["seeds"]["path"] = str(tmp_path / "seeds.jsonl")
    result = synthledger.generate(data, store=url, name="from-dict")
    assert result.ok


def test_dataset_without_the_datasets_package_says_what_to_install(project, monkeypatch):
    config, url = project
    synthledger.generate(config, store=url)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with synthledger.open_store(url) as st, pytest.raises(synthledger.MissingExtra, match=r"synthledger\[train\]"):
        st.dataset("api")


def test_error_hints_name_keyword_arguments_not_cli_flags(project, tmp_path):
    """The engine's hints say `--resume`, `--run ID`, `--set`, `--store` on the command line; a
    script gets the keyword arguments it would pass instead."""
    config, url = project
    synthledger.generate(config, store=url)
    with pytest.raises(ValueError) as taken:
        synthledger.generate(config, store=url)
    assert 'pass run="' in str(taken.value) and 'or name="NEW"' in str(taken.value)
    with pytest.raises(ValueError) as typo:
        synthledger.generate(config, store=url, name="x", overrides=["budget.queries=true"])
    assert "given by overrides budget.queries" in str(typo.value)
    with pytest.raises(Exception) as missing:
        synthledger.open_store(f"sqlite:///{tmp_path / 'typo.db'}")
    assert "(from the store argument)" in str(missing.value)
    with pytest.raises(Exception) as resume:
        synthledger.generate(config, store=f"sqlite:///{tmp_path / 'never.db'}", resume=True)
    assert "without resume=True" in str(resume.value)
    for exc in (taken.value, typo.value, missing.value, resume.value):
        assert "--" not in str(exc), str(exc)


def test_a_summary_says_when_its_answers_were_reused_not_sent(project):
    # A second run of the same queries is served from the store: "0.0 req/s" beside "3 queries"
    # read as a stalled run until the summary said where the answers came from.
    config, url = project
    first = synthledger.generate(config, store=url)
    assert "reused" not in first.summary
    again = synthledger.generate(config, store=url, name="api-again")
    assert again.ok and "3 queries (3 reused from the store, not paid)" in again.summary, again.summary


def test_arguments_of_the_wrong_shape_are_the_apis_own_errors(project):
    # generate(42) raised a bare TypeError; one override string was read character by character
    # ("override 'b' must look like section.key=value"); events(types="query_settled") and a
    # misspelt type silently gave nothing.
    config, url = project
    for bad in (42, None):
        with pytest.raises(ValueError, match="config must be a path to a TOML file"):
            synthledger.generate(bad, store=url)
    result = synthledger.generate(config, store=url, name="one-override", overrides="budget.queries=3")
    assert result.snapshot["spent"]["queries"] == 3
    with synthledger.open_store(url) as store:
        settled = list(store.events(result.run_id, types="query_settled"))
        assert len(settled) == 3 and {e["type"] for e in settled} == {"query_settled"}
        with pytest.raises(ValueError, match="'query_setled' is not an event type"):
            list(store.events(result.run_id, types=["query_setled"]))


def test_a_run_results_repr_never_shows_the_stores_password():
    """A notebook shows a result's repr: a PostgreSQL URL's password was in it whole (QA)."""
    from synthledger.engine.run.runner import RunResult

    url = "postgresql+psycopg://qat:p%40ss%3Aw%2540rd@127.0.0.1:5439/ledger"
    result = RunResult("r1", "completed", "the plan is complete", store_url=url)
    assert result.store_url == url  # (still what opens the store)
    for shown in (repr(result), str(result)):
        assert "p%40ss" not in shown and "qat:***@127.0.0.1:5439/ledger" in shown, shown
