"""Plugins load through entry points: the built-ins, and a third-party package built and installed
from tests/fixtures/thirdparty_plugin exactly as an outside author's would be (offline). The same
package, told to misbehave, shows what a broken plugin gets: one line naming it and where its code
failed, the run closed as failed with what was on its way settled, and no endless plan."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import synthledger
from synthledger.testing.server import ServerConfig, run_in_thread

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / "cli.py")
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "thirdparty_plugin"
BUILTIN_KINDS = {"teachers", "strategies", "verifiers", "seed_sources", "tasks", "trainers", "evaluators"}


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> str:
    """Build and install the fixture package into a directory of its own; nothing is downloaded."""
    work = tmp_path_factory.mktemp("thirdparty")
    src = work / "src"
    shutil.copytree(FIXTURE, src)  # building writes build/ and egg-info: keep them out of the repository
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                    "--no-index", "--disable-pip-version-check", "--target", str(target), str(src)],
                   check=True, capture_output=True, text=True, timeout=120)
    assert (target / "synthledger_echo.py").exists()
    return str(target)


@pytest.fixture(scope="module")
def server():
    with run_in_thread() as srv:
        yield srv


def cli(*args: str, plugins: str | None = None, only: str | None = None, cwd: Path | None = None,
        **extra_env: str):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **extra_env}
    env.pop("SYNTHLEDGER_PLUGINS", None)
    env.pop("SYNTHLEDGER_STORE", None)
    if plugins:
        env["PYTHONPATH"] = plugins + os.pathsep + env.get("PYTHONPATH", "")
    if only is not None:
        env["SYNTHLEDGER_PLUGINS"] = only
    r = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    r.stderr = " ".join(r.stderr.split())
    return r


def listed(r) -> list[dict]:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_builtins_come_from_the_synthledger_distribution():
    regs = listed(cli("plugins", "--json"))
    assert {r["kind"] for r in regs} == BUILTIN_KINDS
    assert {(r["distribution"], r["version"]) for r in regs} == {("synthledger", synthledger.__version__)}
    names = {(r["kind"], r["name"]) for r in regs}
    assert {("strategies", "answer_augmentation"), ("teachers", "openai-compatible"), ("seed_sources", "jsonl"),
            ("strategies", "mix")} <= names
    assert not any(r["name"] == "echo_strategy" for r in regs)


def test_third_party_plugin_is_listed_with_its_distribution(plugin_path):
    regs = listed(cli("plugins", "--json", plugins=plugin_path))
    echo = [r for r in regs if r["name"] == "echo_strategy"]
    assert echo == [{"kind": "strategies", "name": "echo_strategy", "plugin": "echo",
                     "distribution": "synthledger-echo", "version": "0.3.1"}]
    assert any(r["distribution"] == "synthledger" for r in regs)  # the built-ins are still there


@pytest.mark.parametrize("only,echo,builtins", [
    ("synthledger", False, True),
    ("synthledger-echo", True, False),
    ("Synthledger_Echo", True, False),  # distribution names compare as pip compares them
    ("echo,teachers", True, True),
])
def test_synthledger_plugins_restricts_loading(plugin_path, only, echo, builtins):
    regs = listed(cli("plugins", "--json", plugins=plugin_path, only=only))
    assert any(r["name"] == "echo_strategy" for r in regs) == echo
    assert any(r["distribution"] == "synthledger" for r in regs) == builtins
    if only == "echo,teachers":
        # echo's kinds, and the built-in teachers
        assert {r["kind"] for r in regs} == {"teachers", "strategies", "verifiers", "seed_sources", "tasks"}


def test_a_misspelt_restriction_is_an_error(plugin_path):
    r = cli("plugins", "--json", plugins=plugin_path, only="synthledger,Ecoh_Plugin")
    # Named as the user spelt it, beside the names as installed (not their pip-normalized forms).
    assert r.returncode == 2 and "SYNTHLEDGER_PLUGINS names 'Ecoh_Plugin'" in r.stderr and "Traceback" not in r.stderr
    installed = r.stderr.partition("(installed: ")[2].rstrip(")").split(", ")
    assert "echo" in installed and "synthledger-echo" in installed and "synthledger" in installed, installed


def write_project(tmp_path: Path, server_url: str, extra: str = "", seeds: int = 4) -> Path:
    from synthledger.testing.projects import write_project as write

    write(tmp_path, server_url, name="echo-run", queries=10, seeds=seeds, strategy="echo_strategy",
          extra='prefix = "Echo, please:"\n' + extra)
    return tmp_path


def test_generate_with_a_third_party_strategy(plugin_path, server, tmp_path):
    project = write_project(tmp_path, server.url)
    before = server.stats()["received"]
    url = f"sqlite:///{project / 'store.db'}"
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, plugins=plugin_path, cwd=project)
    assert r.returncode == 0, r.stderr
    assert "completed" in r.stdout
    assert server.stats()["received"] - before == 4  # one query per seed, as the plugin plans
    audit = cli("audit", "echo-run", "--json", "--store", url, plugins=plugin_path)
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["ok"] and report["spent"]["queries"] == 4
    assert report["by_strategy"]["echo_strategy"]["queries"] == 4
    con = sqlite3.connect(project / "store.db")
    prompts = [json.loads(p)["messages"][0]["content"] for (p,) in
               con.execute("SELECT payload FROM events WHERE type = 'query_reserved' ORDER BY seq")]
    assert len(prompts) == 4 and all(p.startswith("Echo, please: Ann has") for p in prompts)
    config = json.loads(con.execute("SELECT payload FROM events WHERE seq = 1").fetchone()[0])["config"]
    assert config["strategy"] == {"name": "echo_strategy", "prefix": "Echo, please:"}


def test_third_party_options_are_validated_with_key_paths(plugin_path, server, tmp_path):
    project = write_project(tmp_path, server.url, extra='prefx = "typo"')
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", f"sqlite:///{project / 'store.db'}",
            plugins=plugin_path, cwd=project)
    assert r.returncode == 2 and "run.toml: invalid [strategy] options: strategy.prefx: unknown key" in r.stderr
    assert not (project / "store.db").exists()


def test_restricted_out_plugin_cannot_be_used(plugin_path, server, tmp_path):
    project = write_project(tmp_path, server.url)
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", f"sqlite:///{project / 'store.db'}",
            plugins=plugin_path, only="synthledger", cwd=project)
    assert r.returncode == 2 and "no strategy named 'echo_strategy'" in r.stderr


def test_an_empty_restriction_restricts_nothing(plugin_path):
    regs = listed(cli("plugins", "--json", plugins=plugin_path, only=""))
    assert any(r["name"] == "echo_strategy" for r in regs) and any(r["distribution"] == "synthledger" for r in regs)


def test_a_registration_hook_that_raises_is_one_line_naming_the_plugin(plugin_path):
    r = cli("plugins", plugins=plugin_path, SYNTHLEDGER_ECHO_FAULT="register")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "plugin 'echo' (synthledger-echo) register_strategies raised ValueError" in r.stderr
    assert "synthledger_echo.py:" in r.stderr and "registration went wrong" in r.stderr


def run_faulty(plugin_path, tmp_path, url: str, fault: str, seeds: int = 4):
    project = write_project(tmp_path, url, extra=f'fault = "{fault}"\n', seeds=seeds)
    store = f"sqlite:///{project / 'store.db'}"
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", store, plugins=plugin_path, cwd=project)
    runs = listed(cli("runs", "--json", "--store", store))
    audit = cli("audit", "echo-run", "--json", "--store", store, plugins=plugin_path)
    assert audit.returncode == 0 and json.loads(audit.stdout)["ok"]
    return r, runs[0]["status"], sqlite3.connect(project / "store.db")


@pytest.mark.parametrize("fault, said", [
    ("plan", "strategy 'echo_strategy' (plugin echo from synthledger-echo 0.3.1) plan() raised RuntimeError at "
             "synthledger_echo.py:"),
    ("type", "strategy 'echo_strategy' returned str from run() on item"),
    ("dupkey", "plan() yielded the item key 'echo:dup' twice"),
    ("cost_str", "strategy 'echo_strategy' returned {'teacher': '2'} from item_cost(); expected a dict of role -> "
                 "whole number of queries"),
])
def test_a_broken_strategy_fails_its_run_in_one_line(plugin_path, server, tmp_path, fault, said):
    r, status, _ = run_faulty(plugin_path, tmp_path, server.url, fault)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    assert status == "failed" and said in r.stderr, r.stderr


def test_a_strategy_that_raises_lets_the_answers_on_their_way_settle(plugin_path, tmp_path):
    with run_in_thread(ServerConfig(latency_ms=100, jitter_ms=100)) as slow:
        r, status, con = run_faulty(plugin_path, tmp_path, slow.url, "run", seeds=10)
    assert r.returncode == 1 and "Traceback" not in r.stderr and status == "failed"
    assert "raised KeyError at synthledger_echo.py:" in r.stderr and "no such field" in r.stderr
    counts = dict(con.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
    # A hard stop would cut the other nine items' answers off in flight: paid for, never settled.
    assert counts["query_dispatched"] == counts["query_settled"] == 10, counts


def test_a_plan_that_only_repeats_answered_queries_ends(plugin_path, server, tmp_path):
    r, status, con = run_faulty(plugin_path, tmp_path, server.url, "repeat")
    assert r.returncode == 1 and status == "failed"
    assert "took nothing from the budget" in r.stderr and "sample_index" in r.stderr, r.stderr
    (settled,), = con.execute("SELECT count(*) FROM events WHERE type = 'query_settled'").fetchall()
    assert settled == 4  # one per seed: every later round asked the same four queries


def test_a_strategy_that_catches_the_budgets_refusal_ends_budget_exhausted(plugin_path, server, tmp_path):
    # It turned the run `failed` ("its plan would never end"), with 4,096 junk rejected items
    # recorded, and 4,096 more at each resume.
    r, status, con = run_faulty(plugin_path, tmp_path, server.url, "catch")
    assert r.returncode == 0 and status == "budget_exhausted", r.stderr
    counts = dict(con.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
    assert counts["query_settled"] == 10 and counts["item_done"] <= 10 + 1, counts
    assert counts.get("sample_rejected", 0) <= 1, counts


@pytest.mark.parametrize("fault, said", [
    ("role", "asked role 'augmenter', which neither the strategy nor the verifier declares in its `roles`"),
    ("bad_ask", "gave ctx.ask() a bad max_tokens: Input should be greater than 0"),
    ("answer_type", "whose answer is int; expected str"),
])
def test_a_strategy_that_asks_or_answers_out_of_contract_is_one_line(plugin_path, server, tmp_path, fault, said):
    r, status, con = run_faulty(plugin_path, tmp_path, server.url, fault)
    assert r.returncode == 1 and status == "failed" and "Traceback" not in r.stderr
    assert said in r.stderr, r.stderr
    if fault == "role":  # it went to the teacher's model, counted as the teacher's, with nothing said
        assert con.execute("SELECT count(*) FROM events WHERE type = 'query_reserved'").fetchone() == (0,)


@pytest.mark.parametrize("fault, said", [
    ("raise", "verifier 'echo_verifier' (plugin echo from synthledger-echo 0.3.1) verify() on item 'echo:1' raised "
              "ZeroDivisionError at synthledger_echo.py:"),
    ("bool", "verifier 'echo_verifier' (plugin echo from synthledger-echo 0.3.1) returned bool from verify() on "
             "item 'echo:1'; expected a Verdict"),
])
def test_a_broken_verifier_is_named_not_the_strategy(plugin_path, server, tmp_path, fault, said):
    project = write_project(tmp_path, server.url, extra=f'\n[verifier]\nname = "echo_verifier"\nfault = "{fault}"\n',
                            seeds=1)
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", f"sqlite:///{project / 'store.db'}",
            plugins=plugin_path, cwd=project)
    assert r.returncode == 1 and "Traceback" not in r.stderr and said in r.stderr, r.stderr


def test_a_seed_source_that_returns_no_seeds_is_one_line_naming_it(plugin_path, server, tmp_path):
    project = write_project(tmp_path, server.url)
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", f"sqlite:///{project / 'store.db'}",
            "--set", 'seeds.source="echo_seeds"', plugins=plugin_path, cwd=project)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert ("seed source 'echo_seeds' (plugin echo from synthledger-echo 0.3.1) load() returned a dict at "
            "position 1; expected a Seed") in r.stderr


@pytest.mark.parametrize("fault, said", [
    ("not_a_class", "registered 'objstrat' as <class 'object'>, which is not a strategy class with an Options model"),
    ("int_name", "registered the name 5; a name is a non-empty string"),
    ("blank_name", "registered the name ''; a name is a non-empty string"),
])
def test_a_registration_that_is_no_plugin_is_one_line_naming_it(plugin_path, fault, said):
    """`object` as a strategy was a traceback from the first run that used it; the name 5 crashed
    `plugins` (rich cannot render an int); an empty name was listed blank."""
    r = cli("plugins", plugins=plugin_path, SYNTHLEDGER_ECHO_FAULT=fault)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not r.stdout, r.stderr
    assert "plugin 'echo' (synthledger-echo) register_strategies" in r.stderr and said in r.stderr, r.stderr


def test_a_misspelt_hook_is_an_error_not_a_silent_nothing(plugin_path):
    r = cli("plugins", plugins=plugin_path, SYNTHLEDGER_ECHO_FAULT="hookname")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "plugin 'echo' from synthledger-echo implements a hook synthledger does not have" in r.stderr
    assert "register_strategys" in r.stderr


def test_a_plugin_asking_a_max_tokens_the_server_refuses_is_named_and_its_peers_settle(plugin_path, tmp_path):
    # The message blamed [teacher] max_tokens, which the user had set right; the other requests in
    # flight were cancelled and counted as maybe billed, at a worst case of 10**9 output tokens each.
    with run_in_thread(ServerConfig(latency_ms=1000)) as slow:  # the refusal comes at once, the answers in 1 s
        r, status, con = run_faulty(plugin_path, tmp_path, slow.url, "huge_ask", seeds=10)
    assert r.returncode == 1 and status == "failed", r.stderr
    assert "refuses max_tokens = 1000000000" in r.stderr and "ctx.ask()" in r.stderr, r.stderr
    billed = con.execute("SELECT count(*) FROM events WHERE type = 'attempt_failed' "
                         "AND json_extract(payload, '$.maybe_billed')").fetchone()[0]
    settled = con.execute("SELECT count(*) FROM events WHERE type = 'query_settled'").fetchone()[0]
    assert billed == 0 and settled == 9


def test_an_item_that_asks_more_than_its_item_cost_is_warned_about_once(plugin_path, server, tmp_path):
    # Items run side by side by their declared worst case: 8 of 20 queries went to items cut short,
    # with nothing said.
    r, status, con = run_faulty(plugin_path, tmp_path, server.url, "cost_lie")
    assert r.returncode == 0, r.stderr
    warned = [json.loads(p)["message"] for (p,) in
              con.execute("SELECT payload FROM events WHERE type = 'run_warning'")
              if json.loads(p)["kind"] == "item_cost_exceeded"]
    assert len(warned) == 1 and "asked more teacher queries than its item_cost()" in warned[0], warned


@pytest.mark.parametrize("fault, said", [
    ("int_text", "returned a Completion from complete() whose texts[0] is int; expected str"),
    ("raise", "complete() raised RuntimeError at synthledger_echo.py:"),
    ("none", "returned NoneType from complete(); expected a Completion"),
    ("bound", "returned -100 from prompt_tokens_upper_bound()"),
    ("factory", "returned int from its factory; expected a teacher"),
])
def test_a_broken_teacher_is_named_stops_at_once_and_leaves_a_resumable_run(plugin_path, tmp_path, fault, said):
    """A teacher's int text was stored in `query_settled` (audit failed, and a resume replayed it
    from the store for good), and one that raised was retried as a server error until the budget
    was spent, each attempt charged; both, and the rest, were blamed on the strategy."""
    project = write_project(tmp_path, "http://127.0.0.1:9")
    config = project / "run.toml"
    config.write_text(config.read_text().replace('provider = "openai-compatible"', 'provider = "echo_teacher"'))
    store = f"sqlite:///{project / 'store.db'}"
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", store, plugins=plugin_path, cwd=project,
            SYNTHLEDGER_ECHO_TEACHER=fault)
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert "teacher 'echo_teacher' (plugin echo from synthledger-echo 0.3.1)" in r.stderr and said in r.stderr, r.stderr
    if fault == "factory":  # refused before a run began
        return
    con = sqlite3.connect(project / "store.db")
    texts = [json.loads(p).get("text") for (p,) in
             con.execute("SELECT payload FROM events WHERE type = 'query_settled'").fetchall()]
    assert all(isinstance(t, str) for t in texts), texts
    attempts = [json.loads(p)["attempt"] for (p,) in
                con.execute("SELECT payload FROM events WHERE type = 'attempt_failed'").fetchall()]
    assert all(a == 1 for a in attempts) and len(attempts) <= 4, attempts  # stopped, never retried
    audit = cli("audit", "echo-run", "--json", "--store", store, plugins=plugin_path)
    assert audit.returncode == 0 and json.loads(audit.stdout)["ok"], audit.stdout + audit.stderr
    again = cli("generate", "-c", "run.toml", "--resume", "--no-progress", "--store", store, plugins=plugin_path,
                cwd=project)
    assert again.returncode == 0 and "completed" in again.stdout, again.stderr


def test_sigusr1_shows_where_a_plugin_spinning_in_plan_is_and_does_not_kill_the_run(plugin_path, server, tmp_path):
    """The handler was taken from faulthandler before the loop's was in, and a plan() that never
    yields kept the loop from ever putting it in: a USR1 killed the process (its default action)."""
    import signal
    import time

    project = write_project(tmp_path, server.url, extra='fault = "spin"\n')
    mark = tmp_path / "spinning"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": plugin_path + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "SYNTHLEDGER_ECHO_SPIN_MARK": str(mark)}
    env.pop("SYNTHLEDGER_PLUGINS", None)
    proc = subprocess.Popen([sys.executable, CLI, "generate", "-c", "run.toml", "--no-progress", "--store",
                             f"sqlite:///{project / 'store.db'}"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert mark.exists(), proc.communicate(timeout=10)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        assert proc.poll() is None  # it printed, and goes on (spinning)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert "most recent call first" in err and re.search(r'synthledger_echo\.py", line \d+ in plan', err), err


@pytest.mark.parametrize("fault, rc", [("extract", 2), ("equivalent", 1)])
def test_a_broken_task_is_named_not_the_strategy_or_verifier_that_called_it(plugin_path, server, tmp_path, fault, rc):
    """Its `equivalent()` raising was told as "item ... of strategy 'answer_augmentation' raised", and
    its `extract()` raising at the run's start (the verifier's check of the seeds) was a traceback."""
    from synthledger.testing.projects import write_project as write

    write(tmp_path, server.url, name="task-run", queries=4, seeds=4, strategy="answer_augmentation",
          extra='\n[task]\nname = "echo_task"\n\n[verifier]\nname = "final_answer"\n')
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", f"sqlite:///{tmp_path / 'store.db'}",
            plugins=plugin_path, cwd=tmp_path, SYNTHLEDGER_ECHO_TASK=fault)
    assert r.returncode == rc and "Traceback" not in r.stderr + r.stdout, r.stderr
    said = f"task 'echo_task' (plugin echo from synthledger-echo 0.3.1) {fault}() raised"
    assert said in r.stderr and "synthledger_echo.py:" in r.stderr, r.stderr
    assert "strategy 'answer_augmentation'" not in r.stderr, r.stderr
