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


# ---- leaks found by QA: each case below once let a secret through ------------------------------------

import json  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

from synthledger.engine.run.config import validate_plugin_options  # noqa: E402
from synthledger.engine.run.store_choice import choose_store, display_url  # noqa: E402
from synthledger.plugins.teachers.errors import status_error  # noqa: E402
from synthledger.store.urls import display  # noqa: E402

PG_PASSWORD = "PgS3cretPW"


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://postgres@/ledger?host=/tmp/x&password={PG_PASSWORD}",
    f"postgresql+psycopg://postgres@/ledger?password={PG_PASSWORD}&host=/tmp/x",
    f"postgresql+psycopg://postgres@/ledger?host=/tmp/x&sslpassword={PG_PASSWORD}",
    f"postgresql+psycopg://postgres@/ledger?host=/tmp/x&PassWord={PG_PASSWORD}",
    f"postgresql+psycopg://me:other-pw@db/ledger?password={PG_PASSWORD}",
    f"mysql+pymysql://db/ledger?client_secret={PG_PASSWORD}",
])
def test_a_store_password_given_as_a_query_parameter_is_masked_when_the_store_is_shown(url, monkeypatch):
    shown = [display(url), display_url(url), choose_store(url).describe()]
    monkeypatch.setenv("SYNTHLEDGER_STORE", url)
    shown.append(choose_store().describe())
    monkeypatch.delenv("SYNTHLEDGER_STORE")
    shown.append(choose_store(None, url, "run.toml").describe())
    for text in shown:
        assert PG_PASSWORD not in text and "other-pw" not in text, text
        assert "/ledger?" in text, text  # the rest of the URL is still there to recognise the store
    assert "host=/tmp/x" in display(url) or "host" not in url


def test_a_store_password_in_the_url_query_is_never_printed_by_generate_or_store_copy(tmp_path, pg_url):
    url = f"{pg_url}&password={PG_PASSWORD}"  # the test server trusts every local user: any password works
    outputs = []
    with ServerProcess() as server:
        config = write_project(tmp_path, server.url, seeds=2, queries=2)
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store", url], cwd=tmp_path)
        assert res.rc == 0 and res.stderr.startswith("store "), res
        outputs.append(res)
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--name", "again"], cwd=tmp_path,
                       env={"SYNTHLEDGER_STORE": url})
        assert res.rc == 0, res
        outputs.append(res)
    src = f"sqlite:///{tmp_path / 'copy.db'}"
    outputs.append(fork_cli(["store", "copy", url, src], cwd=tmp_path))
    again = fork_cli(["store", "copy", src, url], cwd=tmp_path)
    assert again.rc == 0 and "identical" in again.stdout, again
    outputs.append(again)
    printed = "".join(r.stdout + r.stderr for r in outputs)
    assert PG_PASSWORD not in printed, printed


class _PhpStyleGateway(BaseHTTPRequestHandler):
    """A gateway whose 401 body repeats the key it was sent, JSON-encoded as PHP's json_encode does
    (`/` written as `\\/`, `"` as `\\"`)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        key = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error",
                                     "code": "invalid_api_key"}}).replace("/", "\\/").encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("key, tail", [
    ("Zm9vYmFy/c2VjcmV0+a2V5MTIz==", "c2VjcmV0"),
    ('quo"teXq7Zp93Lm', "teXq7Zp93Lm"),
    ("back\\slashQ8wE4rT", "slashQ8wE4rT"),
    ("tab\tkeyR5tY7uI9o", "keyR5tY7uI9o"),
])
def test_a_key_the_provider_echoes_json_escaped_or_whitespace_collapsed_leaves_it_nowhere(tmp_path, key, tail):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PhpStyleGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = write_project(tmp_path, f"http://127.0.0.1:{server.server_port}", seeds=2, queries=2)
        config.write_text(config.read_text().replace('model = "test-teacher"',
                                                     'model = "test-teacher"\napi_key_env = "MYKEY"'))
        store_dir = tmp_path / "st"
        store = f"sqlite:///{store_dir / 'store.db'}"
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store", store], cwd=tmp_path,
                       env={"MYKEY": key})
        assert res.rc == 1 and "credentials" in res.stderr, res
        events = fork_cli(["events", res.last_line()[1] if res.last_line() else "project", "--store", store],
                          cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert "attempt_failed" in events.stdout and "Incorrect API key provided: [REDACTED]" in events.stdout, events
    assert tail not in res.stdout + res.stderr + events.stdout + events.stderr
    assert tail.encode() not in _all_bytes(store_dir), "the key is in the store file"


@pytest.mark.parametrize("key", ["Zm9vYmFy/c2VjcmV0+a2V5MTIz==", 'quo"te12345678', "back\\slash12345", "tab\tkey123456",
                                 "new\nline123456", "<html&amp>key123", "caf\u00e9-key-123456", "a&b<c>d'e\"f"])
def test_every_form_a_registered_key_takes_in_a_provider_body_is_scrubbed(key):
    redact.register(key)
    bodies = {json.dumps({"m": key})[7:-2], json.dumps({"m": key}, ensure_ascii=False)[7:-2],
              json.dumps({"m": key})[7:-2].replace("/", "\\/")}
    for body in bodies:
        text = f'{{"error": {{"message": "Incorrect API key provided: {body}."}}}}'
        scrubbed = redact.scrub_payload({"body_excerpt": text, "n": 1})["body_excerpt"]
        assert scrubbed == '{"error": {"message": "Incorrect API key provided: [REDACTED]."}}', scrubbed
        assert redact.scrub_payload({"text": text}, shapes=False)["text"] == scrubbed
    for raw in (key, f"<p>{key}</p>"):
        line = redact.one_line(f"Incorrect API key provided: {raw}.")
        assert line.replace("] .", "].") == "Incorrect API key provided: [REDACTED].", line  # (a tag leaves a space)
    err = status_error(401, f"Incorrect API key provided: {key}.", {}, json.dumps({"error": key}))
    assert str(err).count("[REDACTED]") == 1 and redact.scrub_payload({"b": err.body_excerpt})["b"].endswith(
        '"[REDACTED]"}')


def test_scrubbing_a_key_with_few_forms_keeps_ordinary_text():
    redact.register("plain-key-ABCDEF123456")
    text = 'Tom said "hi" \\ then / left at 3 < 4 & 5 > 2'
    assert redact.scrub(text) == text and redact.one_line(text) == text
    payload = {"text": text}
    assert redact.scrub_payload(payload) is payload


CREDENTIAL_PARAMS = ["client_secret", "CLIENT-SECRET", "private_token", "X-Amz-Signature", "X-Amz-Credential",
                     "x-amz-security-token", "access-key", "accessKey", "session_token", "authorization", "auth",
                     "secret", "password", "passwd", "sig", "signature", "refresh_token", "apiKey", "Api-Key"]


@pytest.mark.parametrize("param", CREDENTIAL_PARAMS)
def test_credential_query_parameters_are_refused_in_a_base_url_and_scrubbed_from_text(param):
    url = f"https://gw.example/v1?model=x&{param}=CSleak123456"
    data = {"run": {"name": "x"}, "seeds": {"path": "s.jsonl"}, "teacher": {"model": "m", "base_url": url},
            "budget": {"queries": 2}, "strategy": {"name": "answer_augmentation"}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert "teacher.base_url: holds a credential" in str(info.value) and "CSleak123456" not in str(info.value)
    with pytest.raises(ValueError):
        TeacherSettings(provider="openai-compatible", model="m", base_url=url)
    assert redact.scrub(f"GET {url} failed") == f"GET https://gw.example/v1?model=x&{param}=[REDACTED] failed"
    assert redact.scrub_payload({"u": url})["u"].endswith("=[REDACTED]")


@pytest.mark.parametrize("url", ["https://gw.example/v1?model=x&version=2", "https://gw.example/v1?page=3&keyword=a",
                                 "https://gw.example/v1?tokens=5&max_tokens=9&monkey=1"])
def test_ordinary_query_parameters_are_not_credentials(url):
    assert redact.url_credentials(url) is None and redact.scrub(url) == url


def test_a_credential_query_parameter_on_the_command_line_never_reaches_output_or_a_store(tmp_path):
    with ServerProcess() as server:
        config = write_project(tmp_path, server.url)
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store",
                        f"sqlite:///{tmp_path / 'st' / 'store.db'}", "--set",
                        f"teacher.base_url={server.url}/v1?client_secret=CSleak123456"], cwd=tmp_path)
    assert res.rc == 2 and "teacher.base_url" in res.error_line(), res
    assert "CSleak123456" not in res.stderr + res.stdout
    assert not (tmp_path / "st").exists()


KEY_SHAPED = ["gsk_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd", "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
              "ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "hf_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh",
              "Xq7Zp93LmK2nB8vC4xR6tY1uW5", "sk_live_51HqLyjWDarjtT1zdp7dcXq7Zp93LmK2n"]


@pytest.mark.parametrize("value", KEY_SHAPED)
def test_a_key_typed_into_api_key_env_is_refused_without_being_echoed(tmp_path, value):
    with ServerProcess() as server:
        config = write_project(tmp_path, server.url)
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store",
                        f"sqlite:///{tmp_path / 'st' / 'store.db'}", "--set", f"teacher.api_key_env={value}"],
                       cwd=tmp_path)
    line = res.error_line()
    assert res.rc == 2 and "teacher.api_key_env" in line and "looks like a key" in line, res
    assert value not in res.stderr + res.stdout and value[4:20] not in res.stderr
    assert not (tmp_path / "st").exists()
    for headers_env in ({"x-api-key": value}, {"x-gateway": value}):
        with pytest.raises(ValueError) as info:
            TeacherSettings(provider="openai-compatible", model="m", extra_headers_env=headers_env)
        assert value not in str(info.value) and "looks like a key" in str(info.value)
    with pytest.raises(ValueError) as info:
        TeacherSettings(provider="openai-compatible", model="m", api_key_env=value)
    assert value not in str(info.value)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "GROQ_API_KEY", "MY_GATEWAY_KEY_2", "teacher_key", "HF_TOKEN",
                                  "AZURE_OPENAI_API_KEY_WESTEUROPE_PRODUCTION"])
def test_ordinary_variable_names_are_still_named_in_messages(name, monkeypatch):
    monkeypatch.delenv(name, raising=False)
    assert not redact.looks_like_key(name)
    settings = TeacherSettings(provider="openai-compatible", model="m", api_key_env=name)
    with pytest.raises(MissingApiKey, match=name):
        from synthledger.plugins.teachers.settings import resolve_api_key
        resolve_api_key(settings)


@pytest.mark.parametrize("value", ["gsk_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd", "sk-live-abcdef1234567890abcd",
                                   "ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "AKIAIOSFODNN7EXAMPLE",
                                   "xai-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "Bearer abcdef123456",
                                   "github_pat_11ABCDEFG0123456789_" + "abcdefghijklmnopqrstuvwxyz0123456789" * 2])
def test_a_provider_key_in_an_ordinary_header_is_refused_and_scrubbed(tmp_path, value):
    data = {"run": {"name": "x"}, "seeds": {"path": "s.jsonl"},
            "teacher": {"model": "m", "base_url": "http://127.0.0.1:9/v1", "extra_headers": {"x-custom": value}},
            "budget": {"queries": 2}, "strategy": {"name": "answer_augmentation"}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    msg = str(info.value)
    assert "teacher.extra_headers.x-custom" in msg and "extra_headers_env" in msg and value not in msg, msg
    with pytest.raises(ValueError) as err:
        TeacherSettings(provider="openai-compatible", model="m", extra_headers={"x-custom": value})
    assert "extra_headers_env" in str(err.value) and value not in str(err.value)
    assert value.split()[-1] not in redact.scrub(f"sent x-custom: {value} and failed")


def test_a_provider_key_in_a_header_given_on_the_command_line_never_reaches_a_store(tmp_path):
    value = "gsk_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd"
    with ServerProcess() as server:
        config = write_project(tmp_path, server.url)
        res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store",
                        f"sqlite:///{tmp_path / 'st' / 'store.db'}", "--set",
                        f'teacher.extra_headers={{x-custom="{value}"}}'], cwd=tmp_path)
    assert res.rc == 2 and "extra_headers_env" in res.error_line(), res
    assert value not in res.stderr + res.stdout and not (tmp_path / "st").exists()


@pytest.mark.parametrize("text", [
    "Janet's ducks lay 16 eggs per day; the answer is 18.", "gsk_short and hf_model_name_or_path and AIza",
    "the skill-tree-of-an-ordinary-sentence", "use ghp_ prefixes", "AKIA is a prefix", "xai-grok-2-latest",
    "self.hf_tokenizer_name_or_path_for_the_student_model",
])
def test_key_shapes_leave_ordinary_text_alone(text):
    assert redact.scrub(text) == text


def test_an_extra_headers_env_that_is_not_a_name_is_said_so_without_the_scrubber_blanking_it():
    with pytest.raises(ConfigError) as info:
        validate_plugin_options(TeacherSettings, {"provider": "openai-compatible", "model": "m",
                                                  "extra_headers_env": {"x-api-key": "not a name"}}, "teacher")
    msg = redact.scrub(str(info.value))
    assert "[REDACTED]" not in msg and "must be the *name* of an environment variable" in msg, msg
    assert "teacher.extra_headers_env" in msg and "x-api-key" in msg
    with pytest.raises(ConfigError) as info:
        validate_plugin_options(TeacherSettings, {"provider": "openai-compatible", "model": "m",
                                                  "extra_headers": {"x-api-key": "abcdef"}}, "teacher")
    msg = redact.scrub(str(info.value))
    assert "[REDACTED]" not in msg and "extra_headers_env" in msg and "abcdef" not in msg, msg


@pytest.mark.parametrize("teacher", [{"x-api-key": "abcdef123456"}, {"api-key": "abcdef123456"},
                                     {"x-goog-api-key": "abcdef123456"}, {"extra_headers": {"api-key": "abcdef123456"}},
                                     {"extra_headers": {"x-api-key-2": "abcdef123456"}}])
def test_config_refusals_name_the_key_path_without_a_colon_the_scrubber_reads_as_a_header(teacher):
    data = {"run": {"name": "x"}, "seeds": {"path": "s.jsonl"}, "teacher": {"model": "m", **teacher},
            "budget": {"queries": 2}, "strategy": {"name": "answer_augmentation"}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    msg = redact.scrub(str(info.value))
    assert "[REDACTED]" not in msg and "abcdef123456" not in msg and "_env" in msg, msg


def test_a_key_that_slips_past_validation_into_api_key_env_is_still_not_echoed(monkeypatch):
    # model_construct skips the validators, as a plugin building its settings by hand might.
    key = "gsk_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd"
    monkeypatch.delenv(key, raising=False)
    from synthledger.plugins.teachers.settings import resolve_api_key
    settings = TeacherSettings.model_construct(provider="openai-compatible", model="m", api_key_env=key,
                                               extra_headers={}, extra_headers_env={"x-api-key": key})
    for call in (lambda: resolve_api_key(settings), settings.headers):
        with pytest.raises(MissingApiKey) as info:
            call()
        assert key not in str(info.value) and key[4:20] not in str(info.value), info.value


def test_a_key_with_non_ascii_characters_is_refused_at_start_without_being_shown(monkeypatch):
    # Every request failed (the test server answered 500), retried for two minutes.
    from synthledger.plugins.teachers.settings import MissingApiKey, TeacherSettings, resolve_api_key

    monkeypatch.setenv("MYKEY", "clé-secrète-123")
    with pytest.raises(MissingApiKey, match="MYKEY holds a key with non-ASCII characters") as err:
        resolve_api_key(TeacherSettings(provider="openai-compatible", model="m", api_key_env="MYKEY"))
    assert "secrète" not in str(err.value)


# ---- a store URL's user name: kept, and the same, in every message ----------------------------------

import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from synthledger.store.eventstore import EventStore, StoreError  # noqa: E402
from synthledger.store.urls import normalize  # noqa: E402


@pytest.mark.parametrize("text, expected", [
    # a database URL's user is a user name, not a token (store URLs show it); its password goes
    ("postgresql+psycopg://alice@/ledger?host=/tmp/x", "postgresql+psycopg://alice@/ledger?host=/tmp/x"),
    ("store postgres://alice@db:5432/ledger", "store postgres://alice@db:5432/ledger"),
    ("mysql+pymysql://bob@db/x", "mysql+pymysql://bob@db/x"),
    ("postgresql+psycopg://alice:s3cret@/ledger", "postgresql+psycopg://alice:[REDACTED]@/ledger"),
    ("postgresql://alice:p@ss@db/ledger", "postgresql://alice:[REDACTED]@db/ledger"),  # an unencoded @ too
    ("postgresql+psycopg://alice@/ledger?password=***", "postgresql+psycopg://alice@/ledger?password=***"),
    ("postgresql+psycopg://alice@/ledger?password=s3cret", "postgresql+psycopg://alice@/ledger?password=[REDACTED]"),
    # ... but a token before the host of any other URL still goes, whatever the scheme is called
    ("git+https://tok3n-abcdef@github.com/x", "git+https://[REDACTED]@github.com/x"),
    ("xpostgresql://tok3n-abcdef@h/x", "xpostgresql://[REDACTED]@h/x"),
    ("postgresqlx://tok3n-abcdef@h/x", "postgresqlx://[REDACTED]@h/x"),
    ("1https://tok3n-abcdef@h/x", "1https://[REDACTED]@h/x"),
    ("see ://tok3n-abcdef@h/x", "see ://[REDACTED]@h/x"),
    ("https://u:p@ss@gw.example/v1", "https://u:[REDACTED]@gw.example/v1"),
    # and a provider's key is a key wherever it stands, a database URL's user place included
    ("postgresql://sk-proj-abcdefghijklmnopqrstu@db/ledger", "postgresql://[REDACTED]@db/ledger"),
])
def test_scrub_keeps_a_database_users_name_and_nothing_else(text, expected):
    assert redact.scrub(text) == expected


def test_a_known_secret_in_a_database_urls_user_place_still_goes():
    redact.register("user-who-is-a-secret-42")
    assert redact.scrub("postgresql://user-who-is-a-secret-42@db/x and postgresql://alice@db/x") == \
        "postgresql://[REDACTED]@db/x and postgresql://alice@db/x"


@pytest.mark.parametrize("url, shown", [
    ("postgresql://alice:s3cret@/ledger?host=/tmp/x", "postgresql+psycopg://alice:***@/ledger?host=/tmp/x"),
    ("postgresql://alice@/ledger?host=/tmp/x", "postgresql+psycopg://alice@/ledger?host=/tmp/x"),
    ("postgresql://alice@/ledger?host=/tmp/x&password=s3cret",
     "postgresql+psycopg://alice@/ledger?host=/tmp/x&password=***"),
    ("postgresql://svc_a1b2c3d4e5f6a7b8c9d0:s3cret@db:5432/ledger",
     "postgresql+psycopg://svc_a1b2c3d4e5f6a7b8c9d0:***@db:5432/ledger"),
    ("postgresql://alice%40corp:s3%40cret@/ledger?host=/tmp/x",
     "postgresql+psycopg://alice%40corp:***@/ledger?host=/tmp/x"),
    ("postgresql://alice:p@ss@db/ledger", "postgresql+psycopg://alice:***@db/ledger"),
    ("my-db://alice:s3cret@db/ledger", "my-db://alice:***@db/ledger"),  # (no driver: still masked)
])
def test_a_store_url_reads_the_same_in_every_message(url, shown):
    # The user was kept where the URL was displayed and [REDACTED] where a message with it was
    # scrubbed (every CLI error line), and a masked password re-rendered the query (host=%2Ftmp%2Fx).
    url = normalize(url)
    assert display(url) == shown and display_url(url) == shown
    assert redact.scrub(display(url)) == shown  # an error line about the store, as the CLI prints it
    assert choose_store(url).describe() == f"store {shown} (from --store)"
    assert "s3cret" not in shown and "s3%40cret" not in shown and "ss@" not in shown


def test_a_store_that_cannot_be_opened_names_its_user_as_every_other_line_does(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"}
    env.pop("SYNTHLEDGER_STORE", None)
    for url in (f"postgresql://alice@/ledger?host={tmp_path}", f"postgresql://alice:s3cret@/ledger?host={tmp_path}"):
        with pytest.raises(StoreError) as info:  # no server listens there
            EventStore(url)
        shown = display(normalize(url))
        assert f"cannot open store {shown}:" in str(info.value)
        r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py"), "runs",
                            "--store", url], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 2 and f"error: cannot open store {shown}:" in r.stderr, r.stderr
        assert "s3cret" not in r.stderr and "[REDACTED]" not in r.stderr and f"host={tmp_path}" in r.stderr


def test_a_postgresql_store_reads_the_same_in_what_generate_says_and_in_an_error(tmp_path, pg_url):
    # The test cluster's URLs name a user and no password, as a local socket login does.
    user = pg_url.split("://", 1)[1].split("@", 1)[0]
    url = pg_url.replace(f"://{user}@", f"://{user}:any-pw-works@", 1)
    shown = display(url)
    assert re.match(rf"postgresql\+psycopg://{user}:\*\*\*@/t\d+\?host=/", shown), shown
    with ServerProcess() as server:
        config = write_project(tmp_path, server.url, seeds=2, queries=2)
        for store in (pg_url, url):
            res = fork_cli(["generate", "--config", str(config), "--no-progress", "--store", store,
                            "--name", f"r{len(store)}"], cwd=tmp_path)
            assert res.rc == 0 and res.stderr.startswith(f"store {display(store)} (from --store)"), res
            res = fork_cli(["show", "no-such-run", "--store", store], cwd=tmp_path)
            assert res.rc == 2 and f"no run with id or name 'no-such-run' in {display(store)}" in res.stderr, res
    assert f"://{user}@" in display(pg_url) and "any-pw-works" not in shown


@pytest.mark.parametrize("url, parts", [
    ("postgresql://qat:p@ss:w%40rd@127.0.0.1:5439/ledger2", ("p@ss", "w%40rd", "ss:w")),
    ("postgresql://qat:x@y@127.0.0.1:5439/ledger2", ("x@y", "y@127")),
    ("postgresql://qat:p@ss/w@127.0.0.1:5439/ledger2", ("ss/w", "p@ss")),
])
def test_a_store_url_whose_password_holds_an_unencoded_at_or_slash_is_refused_unread(url, parts):
    """SQLAlchemy and the driver split such a URL in the wrong place and printed part of the password
    in their own errors (`invalid literal for int() with base 10: 'w%40rd@127.0.0.1:5439'`) (QA)."""
    from synthledger.store.errors import StoreError
    from synthledger.store.eventstore import EventStore
    from synthledger.store.urls import display

    with pytest.raises(StoreError) as caught:
        EventStore(url)
    message = str(caught.value)
    assert message.endswith("percent-encode them (%40, %2F)") and "127.0.0.1:5439/ledger2" in message
    for shown in (message, display(url)):
        assert not any(part in shown for part in parts), shown
