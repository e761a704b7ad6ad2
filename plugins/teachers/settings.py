"""The `[teacher]` section of a run config, shared by the HTTP teacher providers."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthledger.engine.errors import SynthledgerError
from synthledger.engine.redact import (CREDENTIAL_VALUE, ENV_HINT, env_name_problem, is_credential_header,
                                       is_credential_value, register, shown_env_name, url_credentials)

DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY"}
LOCAL_PLACEHOLDER_KEY = "sk-local-placeholder"


class MissingApiKey(SynthledgerError, ValueError):
    """The environment variable that should hold the provider's API key is unset or empty."""


class TeacherSettings(BaseModel):
    # A refused value may be the credential itself: pydantic's own message would repeat it.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    max_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    timeout_s: float = Field(default=60.0, gt=0.0)
    # Unset: no pool limit of its own; the engine's concurrency bounds the requests in flight.
    max_connections: int | None = Field(default=None, ge=1)
    extra_headers: dict[str, str] = Field(default_factory=dict)
    # Batch mode (providers openai and anthropic): queries go out through the provider's batch API
    # at its discounted price, up to `batch_size` per batch; a batch is submitted when full or when
    # no new query arrived for `batch_wait_s`, and polled every `batch_poll_s`.
    batch: bool = False
    batch_size: int = Field(default=10_000, ge=1, le=50_000)
    batch_wait_s: float = Field(default=5.0, ge=0.0)
    batch_poll_s: float = Field(default=30.0, gt=0.0)
    # Unset: the provider's own cap on one batch's upload (OpenAI 200 MB, Anthropic 256 MB). Set it
    # lower for a gateway that refuses less; a batch refused as too large is halved all the same.
    batch_max_mb: float | None = Field(default=None, gt=0.0)
    # Header name -> name of the environment variable holding its value: how a gateway credential
    # (x-api-key, a second Authorization) is sent without being written into the recorded config.
    extra_headers_env: dict[str, str] = Field(default_factory=dict)

    @property
    def batch_max_bytes(self) -> int | None:
        return None if self.batch_max_mb is None else max(1, int(self.batch_max_mb * 1_000_000))

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        what = url_credentials(v) if v else None
        if what is not None:
            raise ValueError(f"holds a credential ({what}); {ENV_HINT}")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _key_env_name(cls, v: str | None) -> str | None:
        """A key typed here would be echoed by the "not set" message: refused without repeating it."""
        problem = env_name_problem(v) if v is not None else None
        if problem is not None:
            raise ValueError(problem)
        return v

    # Messages below name a header, then a word, never `name: ...`: the redaction reads `x-api-key: must`
    # as a header written as text and blanks the word after it.

    @field_validator("extra_headers")
    @classmethod
    def _no_credential_headers(cls, v: dict[str, str]) -> dict[str, str]:
        """By the header's name, or by a value shaped like a provider's key (`x-custom = "gsk_..."`)."""
        for name, value in v.items():
            what = ("is a credential header" if is_credential_header(name) else
                    CREDENTIAL_VALUE if is_credential_value(value) else None)
            if what is not None:
                raise ValueError(f"header {name} {what}, which must not be written in a config; name the environment "
                                 f"variable that holds it: extra_headers_env, which maps {name} to the variable's name")
        return v

    @field_validator("extra_headers_env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, var in v.items():
            problem = env_name_problem(var)
            if problem is not None:  # (the value is not repeated: it may be the credential itself)
                raise ValueError(f"the value for header {name} {problem}")
        return v

    def headers(self) -> dict[str, str]:
        """extra_headers plus those read from the environment now (registered as secrets, so no
        output ever carries them); a missing variable fails at startup, naming it."""
        out = dict(self.extra_headers)
        for name, var in self.extra_headers_env.items():
            value = os.environ.get(var, "").strip()
            if not value:
                raise MissingApiKey(f"[teacher] extra_headers_env: header {name} needs the environment variable "
                                    f"{shown_env_name(var)}, which is unset or empty")
            register(value)
            out[name] = value
        return out

    @property
    def key_env(self) -> str:
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.provider, "OPENAI_API_KEY")

    def base_url_is_local(self) -> bool:
        if not self.base_url:
            return False
        host = urlsplit(self.base_url).hostname or ""
        return host in ("127.0.0.1", "localhost", "::1")


def resolve_api_key(settings: TeacherSettings, *, local_placeholder: bool = False) -> str:
    """Read the key now, so a missing one fails at startup rather than on the first query.

    `local_placeholder` lets a self-hosted server on this machine (which usually ignores the key)
    run without one."""
    key = os.environ.get(settings.key_env, "").strip()
    if key:
        register(key)  # from here on, no event, log line or export can carry it
        if not key.isascii():  # every request would fail (QA: HTTP 500s, retried for two minutes)
            raise MissingApiKey(f"the environment variable {shown_env_name(settings.key_env)} holds a key with "
                                "non-ASCII characters, which no API key has and an HTTP header cannot carry; "
                                "check its value")
        return key
    if local_placeholder and settings.base_url_is_local():
        return LOCAL_PLACEHOLDER_KEY
    raise MissingApiKey(
        f"teacher provider {settings.provider!r} needs an API key in the environment variable "
        f"{shown_env_name(settings.key_env)} (set it, or name another variable with [teacher] api_key_env)"
    )


def keyless_hint(settings: TeacherSettings, key: str) -> str | None:
    """What to add to a 401/403 when `key` is the placeholder a local server got because no key was
    set: that server wants one after all, and the refusal alone did not say none was sent (QA)."""
    if key != LOCAL_PLACEHOLDER_KEY:
        return None
    name = shown_env_name(settings.key_env)
    return (f"no API key was set ({name} is unset), so a placeholder went to this local server; "
            f"set {name}, or name another variable with api_key_env")


def as_settings(settings: TeacherSettings | dict) -> TeacherSettings:
    """Factories accept the model or the raw `[teacher]` table (validated here, with its errors)."""
    return settings if isinstance(settings, TeacherSettings) else TeacherSettings.model_validate(settings)
