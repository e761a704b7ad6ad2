"""The synthledger command line: a thin layer over the engine. `python cli.py --help`.

The commands live in `commands/` (runs, models, groups); this file makes the package importable from a
checkout, loads them, and exits."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python cli.py ...` from a checkout: make the package importable
    _root = Path(__file__).resolve().parent
    try:
        import synthledger  # noqa: F401
    except ImportError:
        import importlib.util

        _spec = importlib.util.spec_from_file_location("synthledger", _root / "__init__.py",
                                                       submodule_search_locations=[str(_root)])
        _mod = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
        sys.modules["synthledger"] = _mod
        _spec.loader.exec_module(_mod)  # type: ignore[union-attr]


def _missing_dependency(error: ModuleNotFoundError) -> None:
    """`python cli.py` with a Python the project was never installed into (the system one, or the
    wrong venv) is the most common first mistake; it deserves one line, not an import traceback."""
    missing = (error.name or "").partition(".")[0]
    if not missing or missing == "synthledger":
        raise error
    sys.stderr.write(f"synthledger: cannot start: the module {missing!r} is not installed in this Python "
                     f"({sys.executable}); install the project into it first: pip install -e .\n")
    raise SystemExit(1)


# The commands register themselves on the app as they are imported, in the order `--help` lists them.
try:
    from synthledger.commands import runs  # noqa: E402,F401
    from synthledger.commands import models  # noqa: E402,F401
    from synthledger.commands import groups  # noqa: E402,F401
    from synthledger.commands.common import CliError, app  # noqa: E402,F401  (still importable from here)
except ModuleNotFoundError as _error:
    _missing_dependency(_error)
except KeyboardInterrupt:  # Ctrl-C while the commands load (a second on a slow machine): nothing began
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` prints every thread's Python stack to stderr, and the command goes on: how a
    command that seems stuck (a provider that never answers, a lock, a plugin) tells where it is."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)


def _usage_error(exc: Exception) -> int:
    """A command line Typer cannot take (an unknown option, a missing argument, a bad value) in one
    line, as every other error is, instead of its five-line box; exit status 2, as Typer's."""
    from synthledger.engine.redact import scrub

    ctx = getattr(exc, "ctx", None)
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    sys.stderr.write(f"error: {' '.join(scrub(message + where).split())}\n")
    return int(getattr(exc, "exit_code", 2))


def main() -> None:
    _stacks_on_sigusr1()
    import typer

    try:
        code = app(standalone_mode=False)  # (Typer then returns an exit status instead of exiting)
    except SystemExit as done:
        _exit_now(done.code)
    except typer.Abort:
        _exit_now("aborted")
    except typer.TyperException as exc:
        _exit_now(_usage_error(exc))
    if code == 130:  # Typer turns a Ctrl-C it catches (while parsing, or in a command) into 130, said nowhere
        _exit_now("interrupted", 130)
    _exit_now(code if isinstance(code, int) else 0)


def _exit_now(code: object, status_for_text: int = 1) -> None:
    """Exit without the interpreter's teardown of ~1,500 modules: a third of a second on a slow
    machine, after every command, and part of every rate a whole run is measured by.

    The steps of a normal exit that do matter still run, in its order: threads that are not daemons
    are waited for (anyio's worker thread is often still winding down when a run returns, so
    falling back to the normal exit whenever one was alive paid the teardown in half the runs),
    then exit handlers, then output is flushed."""
    import atexit
    import os
    import threading

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = status_for_text
    status = 0 if code is None else code if isinstance(code, int) else 1
    wait_for_threads = getattr(threading, "_shutdown", None)  # what the interpreter's exit calls first
    if wait_for_threads is None or threading.current_thread() is not threading.main_thread():
        sys.exit(status)  # (called from another thread, the wait would include that thread itself)
    try:
        wait_for_threads()
    except KeyboardInterrupt:  # Ctrl-C while a plugin's thread holds the exit up: leave it, quietly
        print("interrupted while waiting for a plugin's thread to finish", file=sys.stderr)
        status = 130
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # `| head` has what it wanted: quiet, as when the command met it (commands/common)
            status = status or 1
        except OSError as exc:  # the output is lost (a full disk): that must not read as success
            if stream is sys.stdout:
                _say(f"error: {exc.strerror or exc}")
                status = status or 2
        except ValueError:  # a closed stream: nothing more can be written
            pass
    os._exit(status)


def _say(line: str) -> None:
    import os

    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # one that lands before a command has its own handling (Typer loading it)
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
