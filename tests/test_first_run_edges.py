"""What a new user hits on a first run, through the real command line against the test server:
run names are unique, read-only commands never create a store, `generate` says which store it
writes to and why, a named-but-unset API key variable is one line before the run, a final_answer check that cannot be
made is said once and counted, seeds that repeat a question are said before the run, and `python
cli.py` from a Python the project is not installed in says so in one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synthledger.store.eventstore import EventStore, NewEvent
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    full.pop("SYNTHLEDGER_STORE", None)
    full.update(env or {})
    r = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=120)
    r.stderr = " ".join(r.stderr.split())
    return r


@pytest.fixture(scope="module")
def server():
    with run_in_thread() as srv:
        yield srv


def run_ids(url: str) -> list[str]:
    st = EventStore(url, must_exist=True)
    try:
        return [r.id for r in st.list_runs()]
    finally:
        st.close()


# ---- 1: a new run may not take an existing run's name ---------------------------------------------------


def test_rerunning_a_finished_config_is_refused_naming_the_run(server, tmp_path):
    write_project(tmp_path, server.url, name="twice", seeds=2, queries=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_id = re.search(r"run ([0-9a-f]{12}) ", first.stdout).group(1)
    again = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"run name 'twice' is taken by run {run_id}" in again.stderr
    assert "--name" in again.stderr and f"--run {run_id}" in again.stderr
    assert run_ids(url) == [run_id]  # nothing was created, nothing paid
    # --name starts a second run; `show NAME` stays unambiguous
    other = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, "--name", "twice-2", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert len(run_ids(url)) == 2
    shown = cli("show", "twice", "--json", "--store", url, cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == run_id


def test_an_unfinished_run_of_the_same_name_offers_resume(server, tmp_path):
    write_project(tmp_path, server.url, name="half", seeds=2, queries=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    st = EventStore(url)
    held, _, _ = st.start_run("half", {}, "h", [NewEvent("run_started", {"config": {}})])  # killed mid-run
    st.set_status(held, "interrupted")
    st.close()
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, cwd=tmp_path)
    assert r.returncode == 2 and f"taken by run {held}" in r.stderr and "--resume" in r.stderr


def test_a_run_is_not_named_with_another_runs_id(server, tmp_path):
    # `show ID` then meant the other run: this one was reachable by its own id alone.
    write_project(tmp_path, server.url, name="first", seeds=2, queries=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, cwd=tmp_path)
    (run_id,) = run_ids(url)
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, "--name", run_id, cwd=tmp_path)
    assert first.returncode == 0 and r.returncode == 2, r.stderr
    assert f"run name {run_id!r} is the id of run {run_id} (first)" in r.stderr and run_ids(url) == [run_id]


# ---- 4: read-only commands never create a store -------------------------------------------------------------


@pytest.mark.parametrize("args", [("runs",), ("runs", "--json"), ("show", "x"), ("audit", "x"), ("events", "x"),
                                  ("export", "x", "--out", "o.jsonl"), ("generate", "--resume"),
                                  ("generate", "--run", "x")])
def test_read_only_commands_refuse_a_missing_store(tmp_path, args):
    missing = tmp_path / "typo" / "stor.db"
    r = cli(*args, "--store", f"sqlite:///{missing}", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"store {missing} does not exist" in r.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_the_default_store_is_not_created_by_runs_either(tmp_path):
    r = cli("runs", cwd=tmp_path)
    assert r.returncode != 0 and "does not exist (from the default location)" in r.stderr
    assert not (tmp_path / ".synthledger").exists()


def test_generate_resume_with_config_on_a_missing_store(server, tmp_path):
    write_project(tmp_path, server.url, name="r", seeds=2, queries=2)
    r = cli("generate", "-c", "run.toml", "--resume", "--store", f"sqlite:///{tmp_path / 'no.db'}", cwd=tmp_path)
    assert r.returncode != 0 and "does not exist" in r.stderr and not (tmp_path / "no.db").exists()
    assert "start it without --resume" in r.stderr  # (a kill before the store existed paid for nothing)


def test_a_hand_edited_seed_line_that_is_not_json_names_file_line_and_column(server, tmp_path):
    """A tab pasted into a seed's question is a control character JSON forbids inside a string."""
    write_project(tmp_path, server.url, name="tab", seeds=2, queries=2)
    seeds = tmp_path / "seeds.jsonl"
    lines = seeds.read_text().splitlines()
    lines[1] = lines[1].replace("Ann has", "Ann\thas")
    seeds.write_text("\n".join(lines) + "\n")
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", str(tmp_path / "s.db"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    column = lines[1].index("\t") + 1
    assert f"{seeds}, line 2: bad JSON (Invalid control character at column {column})" in r.stderr, r.stderr
    assert not (tmp_path / "s.db").exists()


# ---- issue 14: which store generate writes to, and why --------------------------------------------------


def test_generate_first_line_names_the_store_and_the_rule(server, tmp_path):
    env_db, cfg_db, flag_db = tmp_path / "env.db", tmp_path / "cfg.db", tmp_path / "flag.db"
    write_project(tmp_path, server.url, name="where", seeds=2, queries=2)
    cfg = tmp_path / "run.toml"
    cfg.write_text(cfg.read_text().replace('name = "where"', f'name = "where"\nstore = "sqlite:///{cfg_db}"'))

    def first_line(r: subprocess.CompletedProcess) -> str:
        assert r.returncode == 0, r.stderr
        return r.stderr.split(" run ")[0]

    # the environment beats the config file (and says so)
    r = cli("generate", "-c", "run.toml", "--no-progress", cwd=tmp_path, env={"SYNTHLEDGER_STORE": f"sqlite:///{env_db}"})
    assert r.stderr.startswith(f"store {env_db} (from $SYNTHLEDGER_STORE)"), r.stderr
    assert env_db.exists() and not cfg_db.exists()
    # the flag beats both
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", f"sqlite:///{flag_db}", cwd=tmp_path,
            env={"SYNTHLEDGER_STORE": f"sqlite:///{env_db}"})
    assert r.stderr.startswith(f"store {flag_db} (from --store)"), first_line(r)
    # without either, the config's [run] store
    r = cli("generate", "-c", "run.toml", "--no-progress", cwd=tmp_path)
    assert r.stderr.startswith(f"store {cfg_db} (from [run] store in the run config)"), first_line(r)
    # and the default location, relative to the working directory
    cfg.write_text(cfg.read_text().replace(f'store = "sqlite:///{cfg_db}"\n', ""))
    r = cli("generate", "-c", "run.toml", "--no-progress", cwd=tmp_path)
    assert r.stderr.startswith("store .synthledger/synthledger.db (from the default location)"), first_line(r)
    assert (tmp_path / ".synthledger" / "synthledger.db").exists()


def test_a_store_may_be_named_by_its_path(server, tmp_path):
    """Every command prints a SQLite store as its path, so a path is what users pass back: in the
    config, to --store and in the environment, relative to the working directory like any path."""
    write_project(tmp_path, server.url, name="bypath", seeds=2, queries=2)
    cfg = tmp_path / "run.toml"
    cfg.write_text(cfg.read_text().replace('name = "bypath"', 'name = "bypath"\nstore = "data/runs.db"'))
    (tmp_path / "data").mkdir()
    r = cli("generate", "-c", "run.toml", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("store data/runs.db (from [run] store in the run config)"), r.stderr
    assert (tmp_path / "data" / "runs.db").is_file()
    listed = cli("runs", "--json", "--store", "data/runs.db", cwd=tmp_path)
    assert [row["name"] for row in json.loads(listed.stdout)] == ["bypath"], listed.stderr
    via_env = cli("audit", "bypath", "--json", cwd=tmp_path, env={"SYNTHLEDGER_STORE": str(tmp_path / "data/runs.db")})
    assert via_env.returncode == 0 and json.loads(via_env.stdout)["ok"], via_env.stderr
    typo = cli("runs", "--store", "data/run.db", cwd=tmp_path)
    assert typo.returncode != 0 and "store data/run.db does not exist" in typo.stderr
    assert "Traceback" not in typo.stderr and not (tmp_path / "data" / "run.db").exists()


def test_a_server_url_is_shown_without_its_password():
    from synthledger.engine.run.store_choice import StoreChoice

    line = StoreChoice("postgresql+psycopg://me:hunter2@db.example/synth", "--store").describe()
    assert "hunter2" not in line and "db.example/synth" in line


# ---- 12: api_key_env naming an unset variable ----------------------------------------------------------------


def test_unset_api_key_env_is_one_line_before_the_run(tmp_path):
    with run_in_thread(require_api_key="sk-right") as srv:
        write_project(tmp_path, srv.url, name="keys", seeds=2, queries=2,
                      extra="")
        cfg = tmp_path / "run.toml"
        cfg.write_text(cfg.read_text().replace("max_tokens = 64", 'max_tokens = 64\napi_key_env = "MY_TEACHER_KEY"'))
        url = f"sqlite:///{tmp_path / 's.db'}"
        r = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "api_key_env names MY_TEACHER_KEY, which is not set" in r.stderr and "[teacher]" in r.stderr
        assert srv.stats()["received"] == 0 and not (tmp_path / "s.db").exists()
        ok = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, cwd=tmp_path,
                 env={"MY_TEACHER_KEY": "sk-right"})
        assert ok.returncode == 0, ok.stderr


def test_rejected_credentials_leave_no_attempt_without_its_end(tmp_path):
    # The first 401 stops the run; an attempt recorded as dispatched and not yet sent was left with
    # no outcome (neither spent nor released, only "dispatched"), though it never went out.
    with run_in_thread(require_api_key="sk-right") as srv:
        write_project(tmp_path, srv.url, name="wrongkey", seeds=10, queries=10)
        url = f"sqlite:///{tmp_path / 's.db'}"
        for i in range(3):  # (where the stop finds each attempt varies)
            r = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, "--name", f"wrongkey{i}",
                    cwd=tmp_path, env={"OPENAI_API_KEY": "sk-wrong"})
            assert r.returncode == 1 and "rejected our credentials" in r.stderr, r.stderr
    store = EventStore(url)
    for run_id in run_ids(url):
        events = list(store.iter_events(run_id))
        dispatched = {(e.payload["query_id"], e.payload["attempt"]) for e in events if e.type == "query_dispatched"}
        ended = {(e.payload["query_id"], e.payload["attempt"]) for e in events
                 if e.type in ("attempt_failed", "query_settled")}
        assert dispatched and dispatched <= ended, dispatched - ended
    store.close()


# ---- 13: final_answer verification without references ------------------------------------------------------


def test_final_answer_without_references_warns_once_and_is_counted(server, tmp_path):
    write_project(tmp_path, server.url, name="noref", seeds=3, queries=3, extra='\n[verifier]\nname = "final_answer"\n')
    seeds = tmp_path / "seeds.jsonl"
    rows = [json.loads(line) for line in seeds.read_text().splitlines()]
    seeds.write_text("".join(json.dumps({"question": r["question"]}) + "\n" for r in rows))
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("generate", "-c", "run.toml", "--progress", "--store", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("3 of 3 seeds have no reference answer") == 1
    assert "accepted unchecked" in r.stderr
    shown = json.loads(cli("show", "noref", "--json", "--store", url, cwd=tmp_path).stdout)
    assert shown["samples"]["accepted_unchecked"] == shown["samples"]["accepted"] == 3


def test_the_demo_runs_again_under_a_fresh_name(server, tmp_path):
    write_project(tmp_path, server.url, name="demo", seeds=2, queries=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    for _ in range(2):
        r = cli("demo", "-c", "run.toml", "--store", url, "--out", str(tmp_path / "d.jsonl"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    st = EventStore(url, must_exist=True)
    assert [x.name for x in st.list_runs()] == ["demo", "demo-2"]
    st.close()


def test_a_python_without_the_dependencies_gets_one_line_not_a_traceback(tmp_path):
    # -S hides site-packages: the interpreter a user gets by typing `python3 cli.py` before installing
    r = subprocess.run([sys.executable, "-S", CLI, "--help"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not installed in this Python" in lines[0] and "pip install -e ." in lines[0], r.stderr


def test_seeds_that_repeat_a_question_are_said_once_before_the_run(server, tmp_path):
    # Each copy is its own seed, its answers free after the first, so its rows repeated silently.
    write_project(tmp_path, server.url, name="dups", seeds=3, queries=3)
    lines = (tmp_path / "seeds.jsonl").read_text().splitlines()
    (tmp_path / "seeds.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: seeds: 1 seed(s) repeat an earlier seed's question (e.g. seed 4 repeats seed 1)" in r.stderr


def test_generate_refuses_a_budget_of_zero_queries(server, tmp_path):
    # It took the run's name, loaded the seeds (a local model's too) and ended budget_exhausted, exit
    # 0, with nothing: the README says a budget that cannot cover one query fails the run. (An
    # experiment's seeds-only cell asks for nothing on purpose: it drives the Runner itself.)
    write_project(tmp_path, server.url, name="zero", seeds=2, queries=0)
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "budget.queries = 0 lets no query go" in r.stderr and not (tmp_path / "s.db").exists()


def test_exporting_a_run_that_did_not_finish_says_so(server, tmp_path):
    # It wrote an empty file and said only "wrote 0 rows": easy to take for a finished dataset.
    write_project(tmp_path, server.url, name="cut", seeds=2, queries=2)
    store = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", store, cwd=tmp_path,
            env={"SYNTHLEDGER_EXIT_AFTER_COMMITS": "1"})  # gone right after its start was recorded
    assert r.returncode != 0
    r = cli("export", "cut", "--store", store, "--out", str(tmp_path / "cut.jsonl"), cwd=tmp_path)
    assert r.returncode == 0 and "wrote 0 rows" in r.stdout
    assert "warning: run" in r.stderr and "is running: these are the rows it had accepted so far; it has none" in r.stderr


def test_a_budget_too_small_for_one_query_is_a_failure_naming_the_limit(server, tmp_path):
    # It said "budget exhausted: spent 0 queries, $0.0000", exit 0, and left an empty dataset: as if
    # the money had been spent, when max_tokens at the model's price did not fit in the budget once.
    config = write_project(tmp_path, server.url, name="tiny", seeds=2, queries=10, max_tokens=128,
                           extra='\n[pricing."test-teacher"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 4000.0\n')
    config.write_text(config.read_text().replace("queries = 10", "queries = 10\nusd = 0.5"))  # 128 x $4000/M > $0.5
    store = f"sqlite:///{tmp_path / 's.db'}"
    r = cli("generate", "-c", "run.toml", "--no-progress", "--store", store, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip().splitlines()[-1].split()[2] == "failed", r.stdout
    assert ("the budget cannot cover a single query: one query's worst case (its prompt and max_tokens of answer, "
            "at its price) is over the total usd limit 0.5; raise that limit or lower max_tokens") in r.stderr
    audit = cli("audit", "tiny", "--store", store, "--json", cwd=tmp_path)
    report = json.loads(audit.stdout)
    assert report["ok"] and report["spent"]["queries"] == 0 and report["status"] == "failed"
