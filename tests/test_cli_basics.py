"""The read-side commands (runs, show, events, audit) on a real run recorded against the test server:
stable JSON shapes, run references by id, prefix or name, and where the store is found."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from synthledger.store.eventstore import EventStore
from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")
AMOUNT_KEYS = {"queries", "input_tokens", "output_tokens", "usd"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def cli(*args: str, cwd: Path | None = None, store_env: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("SYNTHLEDGER_STORE", None)
    if store_env is not None:
        env["SYNTHLEDGER_STORE"] = store_env
    r = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    r.stderr = " ".join(r.stderr.split())
    return r


def ok_json(r: subprocess.CompletedProcess):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One real `generate` run (6 queries) in a file store; returns (url, run id, project dir)."""
    project = tmp_path_factory.mktemp("cli")
    with run_in_thread() as srv:
        write_project(project, srv.url, name="basics", seeds=3, queries=6)
        url = f"sqlite:///{project / 'store.db'}"
        r = cli("generate", "-c", "run.toml", "--no-progress", "--store", url, cwd=project)
        assert r.returncode == 0, r.stderr
    run_id = re.search(r"run ([0-9a-f]{12}) ", r.stdout).group(1)
    return url, run_id, project


def test_runs_json_has_stable_keys(recorded):
    url, run_id, _ = recorded
    runs = ok_json(cli("runs", "--json", "--store", url))
    assert [r["id"] for r in runs] == [run_id]
    run = runs[0]
    assert {"id", "name", "status", "created"} <= set(run)
    assert run["name"] == "basics" and run["status"] == "budget_exhausted" and ISO.match(run["created"])
    assert run["kind"] == "generate" and run["events"] > 6


def test_a_table_piped_into_a_file_keeps_its_cells_whole(recorded):
    """Piped, rich laid tables out for 80 columns and cut cells short: `runs | cat` printed the
    creation time as `2026-11-30T23:…`. (The other tests here set COLUMNS; a user's pipe does not.)"""
    url, run_id, _ = recorded
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "SYNTHLEDGER_STORE")}
    r = subprocess.run([sys.executable, CLI, "runs", "--store", url], capture_output=True, text=True, env=env,
                       timeout=120)
    created = ok_json(cli("runs", "--json", "--store", url))[0]["created"]
    assert r.returncode == 0 and run_id in r.stdout and created in r.stdout and "…" not in r.stdout, r.stdout


def test_runs_json_on_an_empty_store(tmp_path):
    EventStore(f"sqlite:///{tmp_path / 'empty.db'}").close()  # only generate creates a store (issue 12, item 4)
    assert ok_json(cli("runs", "--json", "--store", f"sqlite:///{tmp_path / 'empty.db'}")) == []


def test_audit_json_keys(recorded):
    url, run_id, _ = recorded
    report = ok_json(cli("audit", run_id, "--json", "--store", url))
    assert report["ok"] is True and report["violations"] == []
    assert set(report["spent"]) == AMOUNT_KEYS and set(report["budget"]) == AMOUNT_KEYS
    assert report["spent"]["queries"] == 6 and report["budget"]["queries"] == 6
    assert set(report["by_role"]) == {"teacher"} and set(report["by_role"]["teacher"]) == AMOUNT_KEYS
    assert report["by_role"]["teacher"] == report["spent"]
    assert report["status"] == "budget_exhausted"


def damaged_copy(project: Path, tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    """A copy of the recorded store to damage, and a connection to it."""
    broken = tmp_path / "broken.db"
    broken.write_bytes((project / "store.db").read_bytes())
    return broken, sqlite3.connect(broken)


def test_audit_json_violations_are_seq_and_message(recorded, tmp_path):
    url, run_id, project = recorded
    broken, con = damaged_copy(project, tmp_path)
    (seq,) = con.execute("SELECT min(seq) FROM events WHERE type = 'query_settled'").fetchone()
    con.execute("UPDATE events SET payload = replace(payload, '\"queries\":1', '\"queries\":0') WHERE seq = ?",
                (seq,))  # a settlement that claims the query was free
    assert con.total_changes == 1
    con.commit()
    con.close()
    r = cli("audit", run_id, "--json", "--store", f"sqlite:///{broken}")
    report = json.loads(r.stdout)
    assert r.returncode == 1 and report["ok"] is False
    assert report["violations"] and all(set(v) == {"seq", "message"} for v in report["violations"])
    assert report["violations"][0]["seq"] == seq


def test_audit_violations_are_one_line_each_when_piped(recorded, tmp_path):
    # Piped, rich cut them at the width (80 by default): "...the log ends $ at 1187" over two lines.
    url, run_id, project = recorded
    broken, con = damaged_copy(project, tmp_path)
    (last,) = con.execute("SELECT max(seq) FROM events").fetchone()
    con.execute("DELETE FROM events WHERE seq > ?", (last - 3,))
    con.commit()
    con.close()
    r = subprocess.run([sys.executable, CLI, "audit", run_id, "--store", f"sqlite:///{broken}"], capture_output=True,
                       text=True, env={**os.environ, "COLUMNS": "40", "HF_HUB_OFFLINE": "1"}, timeout=120)
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and lines and lines[-1].startswith("audit failed"), r.stderr
    assert all(line.startswith(("seq ", "audit failed")) for line in lines), lines
    assert any(len(line) > 40 and "missing" in line for line in lines), lines


def test_run_by_id_prefix_or_name(recorded):
    url, run_id, _ = recorded
    for ref in (run_id, run_id[:6], "basics"):
        shown = ok_json(cli("show", ref, "--json", "--store", url))
        assert shown["id"] == run_id and shown["name"] == "basics"
    r = cli("show", "no-such-run", "--store", url)
    assert r.returncode == 2 and "no run with id or name 'no-such-run'" in r.stderr and "Traceback" not in r.stderr


def test_ambiguous_name_is_an_error_listing_the_ids(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    st = EventStore(url)
    a, b = st.create_run("twin", {}, "h"), st.create_run("twin", {}, "h")
    st.close()
    r = cli("audit", "twin", "--store", url)
    assert r.returncode == 2 and "'twin' names 2 runs" in r.stderr and a in r.stderr and b in r.stderr
    assert ok_json(cli("audit", a, "--json", "--store", url))["events"] == 0  # by id it is fine


def test_store_option_and_environment_variable(recorded, tmp_path):
    url, run_id, _ = recorded
    other = f"sqlite:///{tmp_path / 'other.db'}"
    EventStore(other).close()
    assert [r["id"] for r in ok_json(cli("runs", "--json", store_env=url))] == [run_id]
    assert ok_json(cli("runs", "--json", "--store", other, store_env=url)) == []  # --store wins
    # neither: the project-local default, relative to the working directory (which only generate creates)
    EventStore(f"sqlite:///{tmp_path / '.synthledger' / 'synthledger.db'}").close()
    assert ok_json(cli("runs", "--json", cwd=tmp_path)) == []
    assert (tmp_path / ".synthledger" / "synthledger.db").exists()
    assert ok_json(cli("audit", run_id, "--json", store_env=url))["ok"] is True


def test_events_dump(recorded):
    url, run_id, _ = recorded
    r = cli("events", run_id, "--store", url)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    n = ok_json(cli("runs", "--json", "--store", url))[0]["events"]
    assert [e["seq"] for e in lines] == list(range(1, n + 1))
    assert all(set(e) == {"seq", "type", "v", "ts", "hash", "payload"} for e in lines)
    assert lines[0]["type"] == "run_started" and lines[-1]["type"] == "run_finished"
    settled = [json.loads(x) for x in cli("events", "basics", "--store", url, "--type", "query_settled").stdout.splitlines()]
    assert len(settled) == 6 and {e["type"] for e in settled} == {"query_settled"}
    assert all(e["payload"]["actual"]["queries"] == 1 for e in settled)
    tail = cli("events", run_id, "--store", url, "--from", str(n - 1)).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in tail] == [n - 1, n]
    assert len(cli("events", run_id, "--store", url, "--limit", "3").stdout.splitlines()) == 3
    # a misspelt type would match nothing: it is refused, naming the type it was close to
    typo = cli("events", run_id, "--store", url, "--type", "query_setled")
    assert typo.returncode == 2 and typo.stdout == "" and "Traceback" not in typo.stderr
    assert "--type 'query_setled' is not an event type (did you mean `query_settled`?)" in " ".join(typo.stderr.split())



def test_show_and_audit_read_as_text(recorded):
    url, run_id, _ = recorded
    r = subprocess.run([sys.executable, CLI, "show", run_id, "--store", url], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"}, timeout=60)
    text = r.stdout
    assert r.returncode == 0, r.stderr
    assert "input_tokens: no limit" in text and "queries: 6" in text
    assert "rows_per_strategy: answer_augmentation=6" in text
    assert "None" not in text and "{'" not in text  # no Python reprs
    audit = subprocess.run([sys.executable, CLI, "audit", run_id, "--store", url], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "200"}, timeout=60)
    assert audit.returncode == 0 and "queries: settled 6" in audit.stdout and "{'" not in audit.stdout


def test_an_error_whose_message_spans_lines_is_printed_as_one(tmp_path):
    """A path with a newline in it (or a driver's multi-line message) must not split the error line:
    scripts and people read the first line of stderr."""
    r = subprocess.run([sys.executable, CLI, "runs", "--store", str(tmp_path / "no\nsuch.db")], capture_output=True,
                       text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: store "), r.stderr
    assert "no such.db does not exist" in r.stderr, r.stderr


@pytest.mark.parametrize("args, said", [
    (["export"], "Missing argument 'RUN'. (see: cli.py export --help)"),
    (["generate", "--bogus"], "No such option: --bogus (see: cli.py generate --help)"),
    (["--busy-timeout", "-1", "runs"], "Invalid value for '--busy-timeout'"),
    # It named $SYNTHLEDGER_BUSY_TIMEOUT, which the user never set.
    (["--busy-timeout", "inf", "runs"], "Invalid value for '--busy-timeout': must be a finite number of seconds"),
    (["nonsense"], "No such command 'nonsense'."),
    # An in-memory store ends with the command: generate paid for a run and kept nothing.
    (["generate", "--store", "sqlite://"], "'sqlite://' is an in-memory store, gone when the command ends"),
    (["runs", "--store", ":memory:"], "':memory:' is an in-memory store"),
    (["events", "x", "--limit", "-1"], "Invalid value for '--limit'"),
])
def test_a_command_line_that_cannot_be_taken_is_one_line(args, said):
    # Typer drew a five-line box around these; every other error is one line.
    r = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80"}, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: ") and said in r.stderr, r.stderr


@pytest.mark.parametrize("tables", [["users"], ["runs"], []], ids=["other", "a_runs_table", "empty"])
def test_a_read_command_on_a_file_that_is_no_store_refuses_and_writes_nothing(tmp_path, tables):
    # `runs` on another program's SQLite file migrated it: our tables added, the file switched to
    # WAL, and with a `runs` table of its own left half-migrated behind an error.
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    for table in tables:
        con.execute(f"CREATE TABLE {table} (id INTEGER)")
    con.commit()
    con.close()
    before = db.read_bytes()
    # An empty one is what a store's creation on a full disk leaves: not "not a store" (QA), but empty.
    said = f"error: store {db} holds nothing yet" if not tables else f"error: {db} is not a synthledger store"
    for args in (["runs"], ["show", "x"], ["audit", "x"]):
        r = cli(*args, "--store", f"sqlite:///{db}")
        assert r.returncode == 2 and r.stderr.startswith(said), r.stderr
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_writing_command_leaves_another_programs_file_alone_but_may_fill_an_empty_one(recorded, tmp_path):
    # `generate --store other.db` and `store copy ... other.db` added our tables beside the file's own.
    url, run_id, project = recorded
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    before = db.read_bytes()
    r = cli("store", "copy", url, f"sqlite:///{db}")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {db} is not a synthledger store"), r.stderr
    r = cli("generate", "-c", str(project / "run.toml"), "--store", f"sqlite:///{db}", "--no-progress")
    assert r.returncode == 2 and f"{db} is not a synthledger store" in r.stderr, r.stderr
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a database with nothing in it yet: a store may be made there
    assert cli("store", "copy", url, f"sqlite:///{empty}").returncode == 0


def test_a_damaged_event_payload_is_named_by_run_and_seq(recorded, tmp_path):
    url, run_id, project = recorded
    broken, con = damaged_copy(project, tmp_path)
    (seq,) = con.execute("SELECT min(seq) FROM events WHERE type = 'sample_proposed'").fetchone()
    con.execute("UPDATE events SET payload = 'x' || payload WHERE seq = ?", (seq,))  # no longer JSON
    con.commit()
    con.close()
    store = f"sqlite:///{broken}"
    for args in (("show", run_id), ("events", run_id)):
        r = cli(*args, "--store", store)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("error:") == 1, r.stderr
        assert f"run {run_id}, event seq {seq} (sample_proposed): the stored payload is not valid JSON" in r.stderr
    audit = cli("audit", run_id, "--json", "--store", store)  # the audit lists it as one violation
    report = json.loads(audit.stdout)
    assert audit.returncode == 1 and report["violations"][0]["seq"] == seq, audit.stderr


def test_audit_of_a_run_still_going_says_running_not_none(tmp_path):
    # It printed "status None" while `show` and `runs` said running.
    from synthledger.engine.ledger.events import RunStarted, to_payload
    from synthledger.store.eventstore import NewEvent

    url = f"sqlite:///{tmp_path / 'store.db'}"
    start = RunStarted(config={"run": {"name": "going"}}, config_hash="h", plan_hash="p", version="test")
    EventStore(url).start_run("going", {"run": {"name": "going"}}, "h", [NewEvent(*to_payload(start))])
    r = cli("audit", "going", "--json", "--store", url)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "running", r.stdout + r.stderr


def test_a_store_that_cannot_be_opened_says_where_its_choice_came_from(tmp_path):
    # generate's first line names the store and the rule that chose it; a store that failed to open
    # said only its path (QA: a full disk, a corrupt file).
    bad = tmp_path / "garbage.db"
    bad.write_text("this is not a database at all, just some text that is long enough\n" * 20)
    r = cli("runs", "--store", str(bad))
    assert r.returncode == 2 and r.stderr.startswith(f"error: cannot open store {bad}"), r.stderr
    assert r.stderr.rstrip().endswith("(store from --store)"), r.stderr
    env = cli("runs", store_env=str(bad))
    assert env.returncode == 2 and "(store from $SYNTHLEDGER_STORE)" in env.stderr, env.stderr
