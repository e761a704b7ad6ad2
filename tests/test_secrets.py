"""No secret is ever written to the store, a log or an export; none can be written into a config.

The hostile case is a provider (a gateway, an OpenAI-compatible server) whose 401 body echoes the
key it was sent: that text flows into attempt events, the run's final message and stderr unless
one boundary scrubs it. The test server plays that provider (`echo_key`), and the key is then
looked for everywhere a user could see it: the store file's bytes, `events`, `show --json`,
`audit --json`, every line the CLI printed, and the exports in every format.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from synthledger.engine import redact
from synthledger.engine.run.config import ConfigError, config_from_dict
from synthledger.plugins.teachers.settings import MissingApiKey, TeacherSettings
from synthledger.testing.projects import write_project
from synthledger.testing.reliability import ServerProcess, fork_cli

RIGHT = "sk-right-0123456789abcdefghij"
WRONG = "zz-wrong-key-9876543210-qwerty"  # not shaped like any known key format: only registration can catch it


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.parametrize("provider", ["openai-compatible", "openai"])
def test_a_401_that_echoes_the_key_leaves_it_nowhere(tmp_path, provider):
    with ServerProcess("--require-api-key", RIGHT, "--echo-key") as server:
        config = write_project(tmp_path, server.url, seeds=4, queries=4)
        text = config.read_text().replace('provider = "openai-compatible"', f'provider = "{provider}"\n'
                                          'api_key_env = "TEACHER_KEY"')
        config.write_text(text)
        store_dir = tmp_path / "store"
        store = f"sqlite:///{store_dir / 'store.db'}"
        args = ["generate", "--config", str(config), "--no-progress", "--store", store]
        outputs = []
        ok = fork_cli(args, cwd=tmp_path, env={"TEACHER_KEY": RIGHT})
        assert ok.rc == 0, ok
        outputs.append(ok)
        run_id = ok.last_line()[1]
        failed = fork_cli([*args, "--run", run_id, "--set", "budget.queries=8"], cwd=tmp_path,
                          env={"TEACHER_KEY": WRONG})
        outputs.append(failed)
        assert failed.rc == 1 and "credentials" in failed.stderr, failed
        assert server.stats()["auth_failed"] >= 1
        for cmd in (["events", run_id], ["show", run_id, "--json"], ["show", run_id], ["audit", run_id, "--json"],
                    ["runs", "--json"]):
            res = fork_cli([*cmd, "--store", store], cwd=tmp_path, env={"TEACHER_KEY": WRONG})
            outputs.append(res)
        events = outputs[2].stdout
        assert "Incorrect API key provided: [REDACTED]" in events, "the server did not echo the key"
        for fmt in ("jsonl", "chat", "hf"):
            res = fork_cli(["export", run_id, "--format", fmt, "--out", str(tmp_path / "exports" / f"out.{fmt}"),
                            "--store", store], cwd=tmp_path)
            assert res.rc == 0, res
            outputs.append(res)
    printed = "".join(r.stdout + r.stderr for r in outputs)
    for key in (RIGHT, WRONG):
        assert key not in printed
        assert key.encode() not in _all_bytes(store_dir), "the key is in the store file"
        assert key.encode() not in _all_bytes(tmp_path / "exports")
    assert len(list((tmp_path / "exports").rglob("*"))) >= 3


@pytest.mark.parametrize("teacher, where", [
    ({"extra_headers": {"Authorization": "Bearer sk-live-abcdef123456"}}, "teacher.extra_headers.Authorization"),
    ({"extra_headers": {"x-api-key": "sk-live-abcdef123456"}}, "teacher.extra_headers.x-api-key"),
    ({"extra_headers": {"X-Gateway-Token": "sk-live-abcdef123456"}}, "teacher.extra_headers.X-Gateway-Token"),
    ({"base_url": "https://user:sk-live-abcdef123456@gw.example/v1"}, "teacher.base_url"),
    ({"base_url": "https://gw.example/v1?api_key=sk-live-abcdef123456"}, "teacher.base_url"),
    ({"base_url": "https://gw.example/v1?key=sk-live-abcdef123456&v=2"}, "teacher.base_url"),
])
def test_credentials_in_headers_or_urls_are_refused_pointing_at_env_settings(teacher, where):
    data = {"run": {"name": "x"}, "seeds": {"path": "s.jsonl"},
            "teacher": {"model": "m", "base_url": "http://127.0.0.1:9/v1", **teacher},
            "budget": {"queries": 2}, "strategy": {"name": "answer_augmentation"}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    msg = str(info.value)
    # The path then a word, never `x-api-key: ...`: the scrubber reads that as a header and blanks what follows.
    assert (f"{where}: " in msg or f"{where} is a credential header" in msg) and "_env" in msg, msg
    assert "sk-live-abcdef123456" not in msg and "[REDACTED]" not in redact.scrub(msg)


def test_a_credential_header_given_on_the_command_line_never_reaches_a_store(tmp_path):
    with ServerProcess() as server:
        config = write_project(tmp_path, server.url)
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store",
                        f"sqlite:///{tmp_path / 'st' / 'store.db'}", "--set",
                        'teacher.extra_headers={Authorization = "Bearer sk-live-abcdef123456"}'], cwd=tmp_path)
    assert res.rc == 2 and "extra_headers_env" in res.stderr, res
    assert "sk-live-abcdef123456" not in res.stderr + res.stdout
    assert not (tmp_path / "st").exists()


def test_a_misspelt_key_is_not_called_a_secret_and_gets_a_suggestion(tmp_path):
    with ServerProcess() as server:
        config = write_project(tmp_path, server.url)
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--set", "teacher.max_token=5"],
                       cwd=tmp_path)
        assert res.rc == 2, res
        assert "teacher.max_token: unknown key (did you mean `max_tokens`?)" in res.stderr, res.stderr
        assert "secret" not in res.stderr
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--set", "limits.max_concurency=5"],
                       cwd=tmp_path)
        assert "limits.max_concurency: unknown key (did you mean `max_concurrency`?)" in res.stderr, res.stderr
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--set", "strategy.samples_per_sed=2"],
                       cwd=tmp_path)
        assert "strategy.samples_per_sed: unknown key (did you mean `samples_per_seed`?)" in res.stderr, res.stderr
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--set", "teacher.zzz=2"], cwd=tmp_path)
        assert "teacher.zzz: unknown key" in res.stderr and "did you mean" not in res.stderr, res.stderr


def test_extra_headers_env_sends_a_header_from_the_environment_and_scrubs_it(monkeypatch):
    monkeypatch.setenv("GATEWAY_KEY", "gw-secret-value-12345")
    settings = TeacherSettings(provider="openai-compatible", model="m", base_url="http://127.0.0.1:9/v1",
                               extra_headers={"X-Title": "synthledger"}, extra_headers_env={"x-api-key": "GATEWAY_KEY"})
    assert settings.headers() == {"X-Title": "synthledger", "x-api-key": "gw-secret-value-12345"}
    assert redact.scrub("gateway said: bad key gw-secret-value-12345") == "gateway said: bad key [REDACTED]"
    monkeypatch.delenv("GATEWAY_KEY")
    with pytest.raises(MissingApiKey, match="GATEWAY_KEY"):
        TeacherSettings(provider="openai-compatible", model="m", extra_headers_env={"x-api-key": "GATEWAY_KEY"}).headers()


def test_a_gateway_key_named_in_extra_headers_env_authenticates_a_run_and_stays_out_of_it(tmp_path):
    # The README's way to send a credential header: refused before, as if the header's name were a secret.
    with ServerProcess("--require-api-key", RIGHT) as server:
        config = write_project(tmp_path, server.url, seeds=2, queries=2)
        config.write_text(config.read_text().replace(
            'model = "test-teacher"', 'model = "test-teacher"\n'
            'extra_headers_env = {Authorization = "GATEWAY_AUTH", x-api-key = "GATEWAY_KEY"}'))
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store",
                        f"sqlite:///{tmp_path / 'st' / 'store.db'}"], cwd=tmp_path,
                       env={"GATEWAY_AUTH": f"Bearer {RIGHT}", "GATEWAY_KEY": WRONG})
        assert res.rc == 0 and server.stats()["answered"] == 2, res
        assert server.stats()["auth_failed"] == 0
    for key in (RIGHT, WRONG):
        assert key.encode() not in _all_bytes(tmp_path / "st") and key not in res.stdout + res.stderr


def test_a_credential_header_written_in_a_config_is_refused_in_one_readable_line():
    data = {"run": {"name": "x"}, "seeds": {"source": "jsonl", "path": "s.jsonl"},
            "teacher": {"provider": "openai-compatible", "model": "m", "extra_headers": {"x-api-key": "abc123456789"}},
            "budget": {"queries": 2}, "strategy": {"name": "answer_augmentation"}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    msg = redact.scrub(str(info.value))  # as the CLI prints it
    assert "\n" not in msg and "[REDACTED]" not in msg and "abc123456789" not in msg
    assert "teacher.extra_headers.x-api-key is a credential header" in msg and "extra_headers_env" in msg


@pytest.mark.parametrize("text, expected", [
    ("https://u:p4ssw0rd@gw.example/v1", "https://u:[REDACTED]@gw.example/v1"),
    ("https://tok3n-abcdef@gw.example/v1", "https://[REDACTED]@gw.example/v1"),
    ("postgresql+psycopg://me:***@/ledger", "postgresql+psycopg://me:***@/ledger"),
    ("GET /v1?api_key=abc123&model=x", "GET /v1?api_key=[REDACTED]&model=x"),
    ("Authorization: Bearer abcdef123456", "Authorization: Bearer [REDACTED]"),
    ('{"x-api-key": "abcdef123456"}', '{"x-api-key": "[REDACTED]"}'),
    ("key sk-proj-abcdefghijklmnopqrstu leaked", "key [REDACTED] leaked"),
    ("Tom has 3 apples; 3+4=7 and a&b", "Tom has 3 apples; 3+4=7 and a&b"),
    ("see http://127.0.0.1:8000/v1/chat", "see http://127.0.0.1:8000/v1/chat"),
])
def test_scrub_replaces_credential_shapes_and_leaves_data_alone(text, expected):
    assert redact.scrub(text) == expected


def test_scrub_value_returns_the_same_object_when_clean():
    payload = {"a": ["x", {"b": "plain"}], "n": 3}
    assert redact.scrub_value(payload) is payload
    redact.register("registered-secret-xyz")
    dirty = {"a": ["x", {"b": "has registered-secret-xyz inside"}], "n": 3}
    clean = redact.scrub_value(dirty)
    assert clean == {"a": ["x", {"b": "has [REDACTED] inside"}], "n": 3}
    assert dirty["a"][1]["b"].endswith("inside") and "registered-secret-xyz" in dirty["a"][1]["b"]


def test_bulk_data_loses_known_keys_but_keeps_key_shaped_text():
    # A teacher's answer is data: a key-shaped string in it stays, a key this process uses does not.
    redact.register("zz-known-teacher-key-31337")
    payload = {"text": "use zz-known-teacher-key-31337 or Bearer abcdefghijkl", "n": 1}
    assert redact.scrub_payload(payload, shapes=False)["text"] == "use [REDACTED] or Bearer abcdefghijkl"
    assert redact.scrub_payload(payload)["text"] == "use [REDACTED] or Bearer [REDACTED]"
    clean = {"text": "3 + 4 = 7? yes & done", "n": 1}
    assert redact.scrub_payload(clean) is clean and redact.scrub_payload(clean, shapes=False) is clean


def test_a_large_part_of_a_flagged_payload_is_scrubbed_only_where_it_needs_it():
    # run_started: a config key named like a credential flags the payload; its 4,000 seeds are
    # tested as one part before being walked, and a secret among them is still found.
    seeds = [{"id": str(i), "question": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(40)]
    payload = {"config": {"teacher": {"api_key_env": "OPENAI_API_KEY", "base_url": "https://u:p4ss@gw/v1"}},
               "seeds": seeds}
    out = redact.scrub_payload(payload)
    assert out["config"]["teacher"]["base_url"] == "https://u:[REDACTED]@gw/v1"
    assert out["seeds"] is seeds  # clean: kept as it was, not copied
    leaky = [*seeds, {"id": "x", "question": "curl -H 'Authorization: Bearer abcdef123456'", "answer": None}]
    out = redact.scrub_payload({**payload, "seeds": leaky})
    assert out["seeds"][-1]["question"] == "curl -H 'Authorization: Bearer [REDACTED]'"
    assert out["seeds"][:40] == seeds and "abcdef123456" in leaky[-1]["question"]
