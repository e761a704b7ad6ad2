"""Which event store a command uses, and why.

A user who sets `$SYNTHLEDGER_STORE` for a session and finds a run written somewhere else (because
a config file named a store) has lost the run as far as they can tell. So the choice is made in
one place, in one documented order, and every run says where it writes and which rule chose it:

    --store flag  >  $SYNTHLEDGER_STORE  >  [run] store in the config  >  .synthledger/synthledger.db

The environment beats the config file on purpose: the config is shared and committed, the
environment is this session's deliberate choice (as with most tools that read both).

Only starting a new run may create a store; every other command opens an existing one
(`must_exist`), so a mistyped path is reported instead of becoming an empty database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...store.eventstore import ENV_STORE, EventStore, StoreError, StoreMissing, default_url
from ...store.urls import normalize

__all__ = ["StoreChoice", "choose_store", "open_store", "display_url"]


@dataclass(frozen=True)
class StoreChoice:
    url: str
    origin: str  # the rule that chose it, as the user would name it

    def describe(self) -> str:
        return f"store {display_url(self.url)} (from {self.origin})"


def display_url(url: str) -> str:
    """The URL as it may be printed: a SQLite file as its path, a server URL without its password."""
    if url.startswith("sqlite") and ":///" in url:
        return url.split(":///", 1)[1].split("?", 1)[0] or url
    from ...store.urls import display

    return display(url)


def resume_words(choice: StoreChoice) -> str:
    """`generate --resume` as it must be typed to find this run again. Without `--config` a resume
    looks in the store that --store or $SYNTHLEDGER_STORE names, else the default one, so a run whose
    store came from --store or from its config's [run] store says so (QA: the hints left --store out,
    and the command they gave opened the default store). A URL holding a password is not repeated."""
    import shlex

    if choice.origin == "--store":
        shown = display_url(choice.url)
        return (f"generate --resume --store {shlex.quote(shown)}" if "***" not in shown
                else "generate --resume with the same --store")
    config = choice.origin.removeprefix("[run] store in ")
    if config != choice.origin:
        return f"generate --config {shlex.quote(config)} --resume"
    return "generate --resume"


def resume_phrase(choice: StoreChoice, program: str = "") -> str:
    """"`generate --resume ...` continues the run", the one wording of `resume_words` that the run's
    interrupted message and the hard-stop line both say (`program`: "python cli.py ", as typed)."""
    words, _, same = resume_words(choice).partition(" with ")
    return f"`{program}{words}`{' with ' + same if same else ''} continues the run"


def choose_store(flag: str | None = None, config_store: str | None = None,
                 config_source: str | None = None) -> StoreChoice:
    """The store a command uses: flag, then environment, then the run config, then the default.
    Each may be a URL or a SQLite file's path."""
    if flag:
        return StoreChoice(normalize(flag), "--store")
    env = os.environ.get(ENV_STORE)
    if env:
        return StoreChoice(normalize(env), f"${ENV_STORE}")
    if config_store:
        return StoreChoice(normalize(config_store),
                           f"[run] store in {config_source}" if config_source else "[run] store")
    return StoreChoice(default_url(), "the default location")


def open_store(choice: StoreChoice | str | None = None, *, create: bool = False) -> EventStore:
    """Open the chosen store; unless `create`, a store that does not exist is an error naming the
    path and the rule that chose it (the usual cause: a typo in --store or in the variable)."""
    if not isinstance(choice, StoreChoice):
        choice = choose_store(choice)
    try:
        return EventStore(choice.url, must_exist=not create)
    except StoreMissing as exc:
        raise StoreMissing(f"{exc} (from {choice.origin}); check the path — only `generate` "
                           "and `experiment run` starting anew create a store") from None
    except StoreError as exc:  # (a store that failed to open said no more where it came from than its path)
        raise type(exc)(f"{exc} (store from {choice.origin})") from None
