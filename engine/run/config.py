"""A run described by a TOML file, validated before anything is written.

Core sections are typed here; the keys a plugin understands beyond `name`/`source`/`provider`
are validated by that plugin's own `Options` model, so a misspelt option fails with its key path
(`strategy.num_exampels: unknown key`) instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Mapping

from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, field_validator,
                      model_validator)

from ..errors import ConfigError
from .config_errors import format_errors as _format_errors
from .configfile import read_toml, tomllib, validate_config
from ..ledger.ledger import BudgetSpec, Limits
from ..redact import (CREDENTIAL_VALUE, ENV_HINT, env_name_problem, header_credentials, is_credential_header, scrub,
                      url_credentials)
from ...store.hashing import canonical


class _Strict(BaseModel):
    # No inf: `usd = inf` was taken as no limit at all, silently (QA).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Open(BaseModel):
    """A section whose extra keys belong to a plugin; they are checked against its Options."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# Key names that hold a credential. Exact names (and a few unambiguous suffixes), never a substring
# match: `teacher.max_token` is a typo of max_tokens, not a secret.
SECRET_KEYS = frozenset({"api_key", "apikey", "api_secret", "secret", "secret_key", "client_secret", "token",
                         "access_token", "auth_token", "bearer_token", "hf_token", "password", "passwd",
                         "authorization", "credentials"})
SECRET_SUFFIXES = ("_api_key", "_apikey", "_secret", "_secret_key", "_password", "_access_token", "_auth_token")


def is_secret_key(key: str) -> bool:
    k = key.strip().lower().replace("-", "_")
    return k in SECRET_KEYS or k.endswith(SECRET_SUFFIXES)


class RunSection(_Strict):
    name: str = Field(min_length=1)
    store: str | None = None
    seed: StrictInt = 0
    description: str | None = None
    # A process that stops heartbeating for this long (frozen, partitioned) loses the run to a
    # `generate --resume`; the holder heartbeats at a third of it.
    lease_ttl_s: StrictFloat = Field(default=30.0, gt=0)
    # Part of every query's identity: replicates of an experiment are independent samples.
    replicate: StrictInt = Field(default=0, ge=0)
    # Answer a query already settled by another run of the store from there, paying nothing.
    reuse: bool = True

    @field_validator("name")
    @classmethod
    def _one_line(cls, name: str) -> str:
        """A name heads `runs` and `show` tables and one-line messages: a newline in it broke them."""
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValueError("must be one line of printable characters (no newline, tab or control character)")
        return name


class SeedsSection(_Open):
    source: str = "jsonl"
    size: StrictInt | None = Field(default=None, gt=0)


# The variable each official SDK reads for its endpoint when no base_url is given.
BASE_URL_ENV = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}


class ModelSection(_Open):
    """A model endpoint for one role (the teacher, the augmenter...)."""

    provider: str = "openai-compatible"
    model: str = Field(min_length=1)
    base_url: str | None = None
    max_tokens: StrictInt = Field(default=256, gt=0)
    temperature: StrictFloat = Field(default=0.7, ge=0)
    top_p: StrictFloat | None = None
    api_key_env: str | None = None
    timeout_s: StrictFloat = Field(default=60.0, gt=0)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        """A key typed here (`gsk_...`) is refused without being repeated: a later "not set" message
        would echo it, and the config is recorded with the run."""
        problem = env_name_problem(v) if v is not None else None
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("base_url")
    @classmethod
    def _no_url_credentials(cls, v: str | None) -> str | None:
        what = url_credentials(v) if v else None
        if what is not None:  # the URL itself is not repeated: it holds the credential
            raise ValueError(f"holds a credential ({what}), and the config is recorded with the run; {ENV_HINT}")
        return v

    @model_validator(mode="after")
    def _endpoint_from_environment(self) -> "ModelSection":
        """A base URL given only by the provider's variable (OPENAI_BASE_URL, ANTHROPIC_BASE_URL) is
        recorded as base_url: where a query was answered decides which answers a later run may reuse
        (run/reuse.py), and a resume must go where its run went. Unrecorded, a run against one server
        reused every answer another server had given (QA). (A URL holding a credential is not
        recorded; the provider still reads it from the variable.)"""
        var = BASE_URL_ENV.get(self.provider)
        url = os.environ.get(var, "").strip() if var is not None and self.base_url is None else ""
        if url and url_credentials(url) is None:
            self.base_url = url
        return self

    @model_validator(mode="after")
    def _no_secrets(self) -> "ModelSection":
        """(Reached when a section is validated on its own; `config_from_dict` refuses these first, by
        their full key path. Each message names the key and goes on without a colon: see _secret_advice.)"""
        extras = self.extras()
        for key in extras:
            if is_secret_key(key):
                raise ValueError(f"{key} holds a secret, and API keys come from the environment only; set "
                                 "api_key_env to the name of the variable that holds it")
        for name in header_credentials(extras.get("extra_headers")):
            raise ValueError(f"extra_headers.{name} carries a credential, and a config is recorded with the run; "
                             f"name the environment variable that holds it instead: "
                             f"extra_headers_env, which maps {name} to the variable's name (or api_key_env for the API key)")
        return self


class LimitsSection(_Strict):
    requests_per_minute: StrictFloat | None = Field(default=None, gt=0)
    tokens_per_minute: StrictFloat | None = Field(default=None, gt=0)
    # Anthropic's separate limits: the prompt (cache reads excluded), and what is written (charged
    # at max_tokens until the answer says). Learned from its headers where not set.
    input_tokens_per_minute: StrictFloat | None = Field(default=None, gt=0)
    output_tokens_per_minute: StrictFloat | None = Field(default=None, gt=0)
    # Unset: what a known rate needs at the observed latency (Little's law), or up to 64 while probing
    # a provider whose limits are unknown; see run/assemble.py.
    max_concurrency: StrictInt | None = Field(default=None, ge=1)
    initial_concurrency: StrictInt | None = Field(default=None, ge=1)
    max_attempts: StrictInt = Field(default=6, ge=1)
    backoff_base_s: StrictFloat = Field(default=0.5, ge=0)
    backoff_max_s: StrictFloat = Field(default=30.0, ge=0)
    breaker_threshold: StrictInt = Field(default=8, ge=1)
    breaker_cooldown_s: StrictFloat = Field(default=5.0, ge=0)


class LimitValues(_Strict):
    # Strict: `queries = true` was read as a budget of 1 query, `queries = 2.9` as 2.
    queries: StrictInt | None = Field(default=None, ge=0)
    input_tokens: StrictInt | None = Field(default=None, ge=0)
    output_tokens: StrictInt | None = Field(default=None, ge=0)
    usd: StrictFloat | None = Field(default=None, ge=0)

    def limits(self) -> Limits:
        return Limits(self.queries, self.input_tokens, self.output_tokens, self.usd)


class BudgetSection(LimitValues):
    counted_roles: list[str] | None = None  # roles counting against the totals (default: all)
    roles: dict[str, LimitValues] = {}

    def spec(self, strategy_shares: dict[str, float] | None = None) -> BudgetSpec:
        total = self.limits()
        shares = total.split(strategy_shares or {})
        return BudgetSpec(total=total, roles={k: v.limits() for k, v in self.roles.items()},
                          strategies=shares,
                          counted_roles=frozenset(self.counted_roles) if self.counted_roles is not None else None)


class Price(_Strict):
    input_per_mtok: StrictFloat = Field(ge=0)
    output_per_mtok: StrictFloat = Field(ge=0)
    cached_input_per_mtok: StrictFloat | None = Field(default=None, ge=0)  # prompt-cache reads, when billed apart


class NamedSection(_Open):
    name: str


class TaskSection(_Strict):
    name: str = "gsm8k"


class DedupeSection(_Strict):
    enabled: bool = True
    threshold: StrictFloat = Field(default=0.8, gt=0, le=1)
    ngram: StrictInt = Field(default=5, ge=1)


class QualitySection(_Strict):
    """The engine's own checks on every sample, before the verifier (see engine/quality_gate.py).

    Not part of the plan: they decide what is kept, not what is asked, so a resume may change them."""

    keep_truncated: bool = False  # keep answers the teacher cut off at max_tokens (finish_reason "length")
    keep_duplicate_answers: bool = False  # keep an answer identical to an earlier one to the same question


class RunConfig(_Strict):
    run: RunSection
    seeds: SeedsSection
    teacher: ModelSection
    augmenter: ModelSection | None = None
    limits: LimitsSection = LimitsSection()
    budget: BudgetSection = BudgetSection()
    pricing: dict[str, Price] = {}
    strategy: NamedSection
    verifier: NamedSection = NamedSection(name="none")
    task: TaskSection = TaskSection()
    dedupe: DedupeSection = DedupeSection()
    quality: QualitySection = QualitySection()

    base_dir: str = Field(default=".", exclude=True)
    source: str = Field(default="config", exclude=True)  # the file it was read from, for messages

    @field_validator("budget")
    @classmethod
    def _budget_has_a_limit(cls, b: BudgetSection) -> BudgetSection:
        if b.limits().is_empty() and not b.roles:
            raise ValueError("set at least one of queries, input_tokens, output_tokens, usd")
        return b

    def model_for(self, role: str) -> ModelSection:
        if role == "augmenter" and self.augmenter is not None:
            return self.augmenter
        return self.teacher

    def snapshot(self) -> dict[str, Any]:
        """The config as recorded in the run_started event (no secrets can be in it: see ModelSection)."""
        return self.model_dump(mode="json", exclude={"base_dir", "source"})

    def config_hash(self) -> str:
        return hashlib.sha256(canonical(self.snapshot())).hexdigest()[:16]

    def plan_view(self) -> dict[str, Any]:
        """The part of the config that decides *what* is asked: changing it mid-run would mix two plans."""
        snap = self.snapshot()

        def model_part(m: dict[str, Any] | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {k: v for k, v in m.items() if k not in ("base_url", "api_key_env", "timeout_s")}

        view = {
            "seed": snap["run"]["seed"],
            "seeds": snap["seeds"],
            "teacher": model_part(snap["teacher"]),
            "augmenter": model_part(snap["augmenter"]),
            "strategy": snap["strategy"],
            "verifier": snap["verifier"],
            "task": snap["task"],
            "dedupe": snap["dedupe"],
        }
        if snap["run"].get("replicate"):  # only when set, so plans recorded before it keep their hash
            view["replicate"] = snap["run"]["replicate"]
        return view

    def plan_hash(self) -> str:
        return hashlib.sha256(canonical(self.plan_view())).hexdigest()[:16]


def parse_override(item: str) -> tuple[list[str], Any]:
    """`teacher.model=gpt-4o` -> (["teacher", "model"], "gpt-4o"); values are read as TOML when they can be."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return _key_path(key), value


def _key_path(key: str) -> list[str]:
    """A dotted key read as TOML reads one, so a quoted part may hold dots or quotes of its own
    (`pricing."gpt-4.1".input_per_mtok`: split on every dot, it was stored under `"gpt-4`); a key
    TOML does not take is split on its dots."""
    try:
        doc: Any = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return [k for k in key.strip().split(".") if k]
    path: list[str] = []
    while isinstance(doc, dict) and len(doc) == 1:
        (name, doc), = doc.items()
        path.append(name)
    return path


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        if not path:
            raise ConfigError(f"override {item!r} names no key; it must look like section.key=value")
        node = data
        for i, k in enumerate(path[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(path[:i + 1])} is not a section")
        node[path[-1]] = value
    return data


def find_secrets(data: Any, path: str = "") -> list[str]:
    """Key paths that look like credentials. A run's config is recorded verbatim in its first event,
    so a key written into the file would end up in the store and in every export of it."""
    found: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            where = f"{path}.{k}" if path else str(k)
            if k == "extra_headers_env" and isinstance(v, dict):
                continue  # header name -> *name* of a variable: the place credential headers belong
            if isinstance(k, str) and is_secret_key(k):
                found.append(where)
            elif k == "extra_headers" and isinstance(v, dict):
                found += [f"{where}.{name}" for name in header_credentials(v)]
                continue
            found += find_secrets(v, where)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += find_secrets(v, f"{path}[{i}]")
    return found


def _secret_advice(path: str) -> str:
    """(A header's path is followed by a word, not a colon: `x-api-key: ...` reads as a header to the
    redaction, which would blank the advice that follows it; so is any other path the redaction
    would read that way.)"""
    head, _, name = path.rpartition(".")
    if head.endswith("extra_headers"):
        what = "is a credential header" if is_credential_header(name) else CREDENTIAL_VALUE
        return (f"{path} {what}, and a run config is recorded in the event store; name the "
                f"environment variable that holds it instead: extra_headers_env, which maps {name} to the variable's name")
    advice = ("secrets are not allowed in a run config (it is recorded in the event store); "
              "put the key in an environment variable and name it with api_key_env")
    said = f"{path}: {advice}"
    return said if scrub(said) == said else f"{path} holds a secret, and {advice}"


def load_config(path: str | Path, overrides: list[str] | None = None,
                given_by: Mapping[str, str] | None = None) -> RunConfig:
    """`given_by` names the option an override came from where it is not `--set` (`--name`)."""
    data = apply_overrides(read_toml(path, "config file"), overrides or [])
    if "experiment" in data and "run" not in data:
        raise ConfigError(f"{path} is an experiment grid, not a run config (it has [experiment]): "
                          f"run it with `experiment run {path}`")
    try:
        return config_from_dict(data, base_dir=str(Path(path).resolve().parent), source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{exc}{_given_by(str(exc), overrides or [], given_by or {})}") from None


def with_origin(message: str, overrides: list[str]) -> str:
    """`message` with the `--set` that gave the key it names, for errors found after loading (a
    plugin's options are checked as its parts are made: "verifier.bogus: unknown key" named no origin)."""
    return message if "(given by " in message else message + _given_by(message, overrides, {})


def _given_by(message: str, overrides: list[str], flags: Mapping[str, str]) -> str:
    """The file is named first; a key the command line set is said to come from there (by its name
    only: the value may be a secret). An error may name the key or a section above it."""
    keys = [o.partition("=")[0].strip() for o in overrides]
    named = [k for k in keys if k and _names(message, k)]
    if not named:
        return ""
    options = [flags[k] for k in named if k in flags]
    sets = [k for k in named if k not in flags]
    said = options + ([f"--set {', '.join(sets)}"] if sets else [])
    return f" (given by {' and '.join(said)})"


def _names(message: str, key: str) -> bool:
    """The message is about `key`: it names the key (`teacher.api_key: ...`, `teacher.x-api-key holds
    ...`) or one below it (`teacher.extra_headers.x-api-key`, from `--set teacher.extra_headers=...`),
    or names a section above it with a colon."""
    if re.search(rf"(^|\s){re.escape(key)}[:.\s]", message):
        return True
    return any(re.search(rf"(^|\s){re.escape(p)}:", message) for p in _prefixes(key)[1:])


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def config_from_dict(data: dict[str, Any], base_dir: str = ".", source: str = "config") -> RunConfig:
    secrets = find_secrets(data)
    if secrets:
        raise ConfigError(f"{source}: " + "; ".join(_secret_advice(k) for k in secrets))
    return validate_config(RunConfig, {**data, "base_dir": base_dir, "source": source}, source)


def options_error(exc: ValidationError, section: str, model: type[BaseModel] | None = None,
                  known: list[str] | None = None) -> ConfigError:
    """A plugin's own validation error, re-phrased with full key paths (`teacher.foo: unknown key`), and
    the closest known key for a misspelt one (from `model`'s fields, or `known`)."""
    return ConfigError(f"invalid [{section}] options\n{_format_errors(exc, prefix=section + '.', model=model, known=known)}")


def validate_plugin_options(options_cls: type[BaseModel], data: dict[str, Any], section: str) -> BaseModel:
    try:
        return options_cls.model_validate(data)
    except ValidationError as exc:
        raise options_error(exc, section, model=options_cls) from None
