"""Run configs: every mistake is reported with its key path, and none of them writes to the store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from synthledger.engine.run.assemble import build_parts
from synthledger.engine.run.config import ConfigError, config_from_dict, load_config, validate_plugin_options
from synthledger.plugins.strategies import AnswerAugmentation
from synthledger.store.eventstore import EventStore

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")

GOOD_TOML = """\
[run]
name = "cfg-test"

[seeds]
source = "jsonl"
path = "seeds.jsonl"

[teacher]
provider = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"
model = "gpt-4o-mini"
max_tokens = 64

[budget]
queries = 20

[strategy]
name = "answer_augmentation"
"""


def good() -> dict:
    return {
        "run": {"name": "cfg-test"},
        "seeds": {"source": "jsonl", "path": "seeds.jsonl"},
        "teacher": {"provider": "openai-compatible", "model": "gpt-4o-mini", "max_tokens": 64},
        "budget": {"queries": 20},
        "strategy": {"name": "answer_augmentation"},
    }


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="run.toml")
    return str(info.value)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "seeds.jsonl").write_text(
        "\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) for i in range(5)) + "\n")
    (tmp_path / "run.toml").write_text(GOOD_TOML)
    return tmp_path


def generate(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "sk-test"}
    env.pop("SYNTHLEDGER_STORE", None)
    r = subprocess.run([sys.executable, CLI, "generate", "--no-progress", *args], cwd=project, env=env,
                       capture_output=True, text=True, timeout=60)
    r.stderr = " ".join(r.stderr.split())  # the console wraps long lines
    return r


# ---- validation errors name their key path --------------------------------------------------------


def test_a_good_config_loads(project):
    cfg = load_config(project / "run.toml")
    assert cfg.run.name == "cfg-test" and cfg.budget.queries == 20 and cfg.teacher.max_tokens == 64
    assert cfg.base_dir == str(project.resolve())


@pytest.mark.parametrize("section,key", [("run", "bogus"), ("limits", "max_concurency"), ("budget", "querys"),
                                         ("dedupe", "treshold")])
def test_unknown_key_in_a_core_section(section, key):
    data = good()
    data.setdefault(section, {})[key] = 1
    assert f"{section}.{key}: unknown key" in error_of(data)


def test_unknown_top_level_section():
    assert "teachr: unknown key" in error_of({**good(), "teachr": {"model": "x"}})


@pytest.mark.parametrize("path,value", [
    (("teacher", "max_tokens"), "lots"),
    (("budget", "queries"), "ten"),
    (("limits", "max_concurrency"), 0),
    (("budget", "roles", "augmenter", "queries"), -1),
    (("run", "seed"), [1, 2]),
    (("budget", "queries"), True),  # was a budget of 1 query
    (("budget", "queries"), 2.5),  # was 2
    (("budget", "output_tokens"), False),
    (("seeds", "size"), True),  # was a run of one seed (QA)
    (("teacher", "max_tokens"), True),  # was 1 token
    (("teacher", "temperature"), False),  # was 0.0
    (("limits", "requests_per_minute"), True),
    (("teacher", "model"), ""),  # reached the provider: eight failed attempts, then "model: field required"
    (("budget", "usd"), float("inf")),  # was no limit at all
    (("limits", "requests_per_minute"), float("inf")),
])
def test_wrong_type_names_its_path(path, value):
    data = good()
    node = data
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    msg = error_of(data)
    assert f"  {'.'.join(path)}: " in msg and "unknown key" not in msg


@pytest.mark.parametrize("section", ["run", "teacher", "strategy", "seeds"])
def test_missing_section(section):
    data = good()
    del data[section]
    assert f"{section}: required key is missing" in error_of(data)


def test_missing_key_inside_a_section():
    data = good()
    del data["teacher"]["model"]
    assert "teacher.model: required key is missing" in error_of(data)


def test_a_dollar_budget_may_be_written_as_a_whole_number():
    data = good()
    data["budget"] = {"usd": 1}
    assert config_from_dict(data).budget.usd == 1.0


def test_budget_needs_a_limit():
    data = good()
    data["budget"] = {}
    assert "budget: set at least one of queries" in error_of(data)


def test_every_error_is_listed_at_once():
    data = good()
    data["run"]["bogus"] = 1
    data["teacher"]["max_tokens"] = "x"
    msg = error_of(data)
    assert "run.bogus" in msg and "teacher.max_tokens" in msg


@pytest.mark.parametrize("path", [("teacher", "api_key"), ("teacher", "openai_api_key"), ("augmenter", "secret"),
                                  ("strategy", "auth", "password"), ("seeds", "hf_token")])
def test_secrets_are_refused_without_echoing_them(path):
    data = good()
    node = data
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = "sk-live-123456"
    msg = error_of(data)
    assert f"{'.'.join(path)}: secrets are not allowed" in msg
    assert "sk-live-123456" not in msg


def test_api_key_env_must_name_a_variable():
    data = good()
    data["teacher"]["api_key_env"] = "sk-live-123456"
    msg = error_of(data)
    assert "teacher.api_key_env: must be the *name* of an environment variable" in msg
    assert "sk-live-123456" not in msg
    data["teacher"]["api_key_env"] = "MY_TEACHER_KEY"
    assert config_from_dict(data).teacher.api_key_env == "MY_TEACHER_KEY"


def test_bad_toml_names_file_and_line(project):
    (project / "run.toml").write_text(GOOD_TOML + "\n[budget\nqueries = 3\n")
    with pytest.raises(ConfigError, match=r"run\.toml: not valid TOML: .*line 2[0-9]"):
        load_config(project / "run.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(project / "missing.toml")
    (project / "latin1.toml").write_bytes(GOOD_TOML.replace("[run]", "# caf\xe9\n[run]").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(byte 0xe9 at offset [0-9]+\)"):
        load_config(project / "latin1.toml")
    # A Windows editor's byte-order mark was "not valid TOML: Invalid statement (at line 1, column 1)".
    (project / "bom.toml").write_bytes(b"\xef\xbb\xbf" + GOOD_TOML.encode())
    (project / "plain.toml").write_text(GOOD_TOML)
    assert load_config(project / "bom.toml").run == load_config(project / "plain.toml").run


# ---- --set overrides --------------------------------------------------------------------------------


def test_overrides_are_read_as_toml_values(project):
    cfg = load_config(project / "run.toml", [
        "budget.queries=50", "teacher.temperature=0.25", 'run.name="with spaces"', "teacher.model=gpt-4o",
        "budget.roles.augmenter.queries=3", "dedupe.enabled=false", "budget.counted_roles=['teacher']",
    ])
    assert cfg.budget.queries == 50 and isinstance(cfg.budget.queries, int)
    assert cfg.teacher.temperature == 0.25
    assert cfg.run.name == "with spaces"
    assert cfg.teacher.model == "gpt-4o"  # not valid TOML: taken as a plain string
    assert cfg.budget.roles["augmenter"].queries == 3
    assert cfg.dedupe.enabled is False
    assert cfg.budget.counted_roles == ["teacher"]
    assert cfg.config_hash() != load_config(project / "run.toml").config_hash()


def test_override_errors_name_the_override_or_key(project):
    with pytest.raises(ConfigError, match="budget.queries: "):
        load_config(project / "run.toml", ["budget.queries=abc"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(project / "run.toml", ["budget.queries"])
    with pytest.raises(ConfigError, match="run.name is not a section"):
        load_config(project / "run.toml", ["run.name.first.x=1"])
    with pytest.raises(ConfigError, match="names no key"):
        load_config(project / "run.toml", ["=3"])


# ---- plugin options ----------------------------------------------------------------------------------


def test_plugin_option_errors_name_strategy_keys():
    with pytest.raises(ConfigError) as info:
        validate_plugin_options(AnswerAugmentation.Options, {"num_exampels": 3, "temperature": "hot"}, "strategy")
    msg = str(info.value)
    assert "strategy.num_exampels: unknown key" in msg and "strategy.temperature: " in msg
    ok = validate_plugin_options(AnswerAugmentation.Options, {"temperature": 0.9}, "strategy")
    assert ok.temperature == 0.9


# ---- through the CLI: a clear message, exit 2, and nothing written --------------------------------------


BAD_RUNS = {
    "unknown core key": ["--set", "run.bogus=1"],
    "wrong type": ["--set", "teacher.max_tokens=\"lots\""],
    "secret": ["--set", "teacher.api_key=\"sk-live-9\""],
    "plugin option": ["--set", "strategy.num_exampels=3"],
    "unknown plugin": ["--set", "strategy.name=\"no_such_strategy\""],
    "seed file": ["--set", "seeds.path=\"missing.jsonl\""],
    # A budget naming no role of the run limited nothing (1,058 paid against queries = 20).
    "misspelt counted role": ["--set", "budget.counted_roles=[\"teachr\"]"],
    "misspelt budget role": ["--set", "budget.roles.teachr.queries=5"],
    "uncounted run": ["--set", "budget.counted_roles=[\"augmenter\"]"],
    # Stored as JSON with 64-bit integers: a larger one failed the start with a traceback.
    "huge number": ["--set", "budget.queries=99999999999999999999999"],
    "huge plugin option": ["--set", "strategy.samples_per_seed=99999999999999999999999"],
    "empty --name": ["--name", ""],  # (was ignored: the config's name was used)
    "name with a newline": ["--name", "a\nb"],
}
EXPECTED = {
    "unknown core key": "run.bogus: unknown key",
    "wrong type": "teacher.max_tokens:",
    "secret": "teacher.api_key: secrets are not allowed",
    "plugin option": "strategy.num_exampels: unknown key",
    "unknown plugin": "no_such_strategy",
    "seed file": "missing.jsonl",
    "misspelt counted role": "budget.counted_roles: no role is called 'teachr' (did you mean `teacher`?)",
    "misspelt budget role": "budget.roles.teachr: no role is called 'teachr' (did you mean `teacher`?)",
    "uncounted run": "budget.counted_roles: none of this run's roles (teacher) is counted",
    "huge number": "budget.queries: too large a number (at most 9,223,372,036,854,775,807)",
    "huge plugin option": "strategy.samples_per_seed: too large a number",
    "empty --name": "run.name: String should have at least 1 character",
    "name with a newline": "run.name: must be one line of printable characters",
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_cli_config_error_writes_nothing(project, case):
    fresh = project / "fresh" / "store.db"  # no store yet: none may be created
    r = generate(project, "-c", "run.toml", "--store", f"sqlite:///{fresh}", *BAD_RUNS[case])
    assert r.returncode == 2, r.stderr
    assert EXPECTED[case] in r.stderr and "Traceback" not in r.stderr
    assert "sk-live-9" not in r.stderr
    assert not fresh.exists() and not fresh.parent.exists()
    assert not (project / ".synthledger").exists()


def test_a_budget_whose_only_limits_are_for_roles_the_run_lacks_is_refused(project):
    # An experiment's base config may limit the augmenter for every strategy: allowed beside totals,
    # but alone it would leave answer augmentation unlimited.
    data = {**good(), "budget": {"roles": {"augmenter": {"queries": 5}}}}
    with pytest.raises(ConfigError, match="its only limits are for roles this run does not have .augmenter"):
        build_parts(config_from_dict(data, base_dir=str(project), source="run.toml"))
    data["budget"]["queries"] = 20
    assert build_parts(config_from_dict(data, base_dir=str(project), source="run.toml")).roles == ("teacher",)


def test_cli_config_error_leaves_an_existing_store_untouched(project):
    db = project / "existing.db"
    EventStore(f"sqlite:///{db}").close()
    before = db.read_bytes()
    r = generate(project, "-c", "run.toml", "--store", f"sqlite:///{db}", "--set", "budget.queries=-5")
    assert r.returncode == 2 and "budget.queries:" in r.stderr
    assert sqlite3.connect(db).execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert db.read_bytes() == before


def test_cli_unknown_teacher_key_names_teacher_foo(project):
    r = generate(project, "-c", "run.toml", "--store", f"sqlite:///{project / 'x.db'}", "--set", "teacher.foo=1")
    assert r.returncode == 2 and "teacher.foo" in r.stderr and "Traceback" not in r.stderr


def test_cli_lists_several_bad_keys_apart_and_names_the_option_that_gave_each(project):
    r = generate(project, "-c", "run.toml", "--store", f"sqlite:///{project / 'x.db'}", "--name", "",
                 "--set", "budget.queries=-1", "--set", "nosection.x=1")
    line = r.stderr.strip()
    assert r.returncode == 2 and "\n" not in line, r.stderr
    assert "invalid config: " in line and line.count("; ") == 2, line  # three bad keys, one line
    assert line.endswith("(given by --name and --set budget.queries, nosection.x)"), line
    only_set = generate(project, "-c", "run.toml", "--store", f"sqlite:///{project / 'x.db'}", "--set", "run.name=")
    assert only_set.returncode == 2 and only_set.stderr.strip().endswith("(given by --set run.name)"), only_set.stderr
    # A plugin's options are checked as its parts are made, after loading: the origin went unsaid (QA).
    plugin = generate(project, "-c", "run.toml", "--store", f"sqlite:///{project / 'x.db'}", "--set", "strategy.bogus=1")
    line = plugin.stderr.strip()
    assert plugin.returncode == 2 and "\n" not in line and "strategy.bogus: unknown key" in line, line
    assert line.endswith("(given by --set strategy.bogus)"), line


def test_an_error_in_a_key_given_by_set_says_so_without_its_value(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[run]\nname = "x"\n[seeds]\npath = "s.jsonl"\n[teacher]\nmodel = "m"\n'
                    '[budget]\nqueries = 2\n[strategy]\nname = "answer_augmentation"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, ["budget.queries=abc"])
    assert str(err.value).startswith(f"{path}: ") and str(err.value).endswith("(given by --set budget.queries)")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["teacher.api_key=sk-live-abcdef123456"])
    assert "(given by --set teacher.api_key)" in str(err.value) and "sk-live-abcdef123456" not in str(err.value)


def test_an_override_key_may_quote_a_part_with_dots_in_it():
    # `pricing."gpt-4.1".input_per_mtok=2` was stored under the keys '"gpt-4' and '1"'.
    from synthledger.engine.run.config import parse_override

    assert parse_override('pricing."gpt-4.1".input_per_mtok=2') == (["pricing", "gpt-4.1", "input_per_mtok"], 2)
    assert parse_override("budget.queries=3") == (["budget", "queries"], 3)
    assert parse_override("a..b=1")[0] == ["a", "b"]  # not TOML: split on its dots, as before


def test_a_config_without_a_budget_says_to_add_one(project):
    # It said "its only limits are for roles this run does not have (; this run's: teacher)".
    text = (project / "run.toml").read_text()
    start = text.index("[budget]")
    end = text.find("\n[", start + 1)
    (project / "run.toml").write_text(text[:start] + (text[end + 1:] if end != -1 else ""))
    r = generate(project, "-c", "run.toml", "--store", f"sqlite:///{project / 'x.db'}")
    assert r.returncode == 2 and "budget: no limit is set; add one, e.g. [budget] queries = 100" in r.stderr, r.stderr


def test_a_grid_given_to_generate_and_a_run_config_given_to_experiment_name_the_command(project):
    # They listed nine unknown keys, or "run: required key is missing", and never the right command.
    (project / "grid.toml").write_text('[experiment]\nname = "g"\nbase = "run.toml"\ntrain = "t.toml"\n'
                                       'strategies = ["answer_augmentation"]\nseed_sizes = [4]\n')
    r = generate(project, "-c", "grid.toml")
    assert r.returncode == 2 and "grid.toml is an experiment grid, not a run config" in r.stderr, r.stderr
    assert "run it with `experiment run grid.toml`" in r.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, CLI, "experiment", "run", "run.toml"], cwd=project, env=env,
                       capture_output=True, text=True, timeout=60)
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and "run.toml is a run config, not an experiment grid" in said, said
    assert "run it with `generate -c run.toml`" in said
