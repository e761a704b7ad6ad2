"""Every command the README shows is run, so the docs cannot drift from the code (issue 14, item 6).

Data-driven: each ```bash block of README.md runs line by line (a trailing `\\` joins lines) in a
fresh folder holding a copy of examples/, and each ```python block that imports synthledger runs
as a script there; a line that fails names its README line. Whatever another change adds to the
README is picked up without touching this file. Only two things are changed on the way, both
listed below with their reasons: lines that install software or need the network are skipped,
and the heavy parts are made light (the test server on a free port instead of 8399, the tiny
random Llama instead of SmolLM2, fewer held-out examples).

Runs real training and generation (about a minute or two on two cores): marked slow.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT_S = 300
README = ROOT / "README.md"
CLI = ROOT / "cli.py"

# (pattern, why): a README line matching one of these is not run.
SKIP = [
    (r"pip install|python3 -m venv", "installs software (the test runs in the installed environment)"),
    (r"-m pytest\b", "runs the test suite itself"),
    (r"^\s*\.\s+\S*activate\b|^\s*source\s+\S*activate\b", "activates a virtualenv (the test's is active)"),
    (r"--push-to-hub|HF_HUB_OFFLINE=0|huggingface\.co", "needs the network"),
    (r"postgresql(\+\w+)?://|\bpsql\b|\$DATABASE\b", "needs a PostgreSQL server (tests/test_postgres_runs.py runs those paths)"),
    (r"experiment_paper\.toml|gsm8k-crossover", "the study's own setting: a served 70B teacher, 7B students on GPUs"),
    (r"experiment_offline|offline-gcd", "a whole grid with real training (minutes); "
                                                "tests/test_experiment_grid.py runs these commands on a small grid"),
    (r"^\s*datasette\b", "starts a web server that runs until stopped"),
]
# Programs the sandbox provides itself; any other program a line starts with must be installed, or
# the line is skipped as "needs X" (a README may show tools a reader installs separately).
OWN_PROGRAMS = {"python", "python3", "synthledger", ".venv/bin/python"}


@dataclass
class Snippet:
    kind: str  # bash | python
    line: int  # README line of the block's first line of code
    lines: list[tuple[int, str]]


def readme_snippets(text: str) -> list[Snippet]:
    out: list[Snippet] = []
    fence = re.compile(r"^```(\w*)\s*$")
    kind, start, body = None, 0, []
    for no, raw in enumerate(text.splitlines(), 1):
        m = fence.match(raw)
        if m and kind is None:
            kind, start, body = (m.group(1) or "text"), no + 1, []
        elif raw.startswith("```") and kind is not None:
            if kind in ("bash", "sh", "shell", "python"):
                out.append(Snippet("python" if kind == "python" else "bash", start, body))
            kind = None
        elif kind is not None:
            body.append((no, raw))
    return out


def commands(snippet: Snippet) -> list[tuple[int, str]]:
    """(README line, command) per shell command; `\\` continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for no, raw in snippet.lines:
        if pending is not None:
            pending = (pending[0], pending[1] + " " + raw.strip())
        elif raw.strip() and not raw.lstrip().startswith("#"):
            pending = (no, raw.strip())
        if pending is not None and not pending[1].endswith("\\"):
            out.append(pending)
            pending = None
        elif pending is not None:
            pending = (pending[0], pending[1][:-1].rstrip())
    return out


def strip_comment(command: str) -> str:
    """The command without a trailing `# ...` (an unquoted `#` after whitespace), so that what the
    test appends is not swallowed by the comment."""
    quote = None
    for i, ch in enumerate(command):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip()
    return command


def skip_reason(command: str) -> str | None:
    why = next((why for pattern, why in SKIP if re.search(pattern, command)), None)
    if why is None:
        program = command.split()[0] if command.split() else ""
        if program not in OWN_PROGRAMS and shutil.which(program) is None:
            why = f"needs {program}, which is not installed here"
    return why


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    """A fresh folder with examples/ made light, and the rewrites every command goes through."""

    def __init__(self, folder: Path, tiny: Path) -> None:
        self.folder = folder
        self.port = free_port()
        shutil.copytree(ROOT / "examples", folder / "examples")
        for toml in (folder / "examples").glob("*.toml"):
            text = toml.read_text().replace('"smollm2"', f'"{tiny}"').replace("8399", str(self.port))
            for key, light in (("epochs", 1), ("limit", 4), ("max_new_tokens", 16), ("max_tokens", 24)):
                text = re.sub(rf"(?m)^{key} = \d+", f"{key} = {light}", text)
            toml.write_text(text)
        self.tiny = tiny
        self.background: list[subprocess.Popen] = []
        self.timings: list[tuple[int, float]] = []  # (README line, seconds), printed at the end
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
        self.env.pop("SYNTHLEDGER_STORE", None)

    def rewrite(self, command: str) -> str:
        py = sys.executable
        command = strip_comment(command).replace("8399", str(self.port))
        command = re.sub(r"(?<![\w/.-])(?:\.venv/bin/)?python3?(?= )", py, command)
        command = re.sub(r"(^|&&\s*|;\s*)synthledger(?= )", lambda m: f"{m.group(1)}{py} {CLI}", command)
        command = command.replace(f"{py} cli.py", f"{py} {CLI}")
        if re.search(r"\bcli\.py\b.*\btrain\b", command):
            command += f" --set trainer.student={self.tiny} --set trainer.epochs=1"
        if re.search(r"\bcli\.py\b.*\beval\b", command):
            command = re.sub(r"--limit \d+", "--limit 4", command) + " --batch-size 4 --max-new-tokens 16"
        if re.search(r"\bcli\.py\b.*\b(generate|demo)\b", command) and "--set teacher.model" not in command:
            command = command.replace(" demo", f" demo --set teacher.model={self.tiny}")
        if re.search(r"\bcli\.py\b.*\b(generate|demo)\b", command) and not re.search(r"--resume|--run\b", command):
            # The tiny random teacher cannot finish an answer in the lightened max_tokens: keep what it
            # cuts off, or the quality gate (rightly) leaves nothing to export and train on.
            command += " --set quality.keep_truncated=true --set quality.keep_duplicate_answers=true"
        return command

    def run(self, no: int, command: str) -> None:
        cmd = self.rewrite(command)
        if cmd.rstrip().endswith("&"):  # a server for what follows: start it, wait until it listens
            proc = subprocess.Popen(cmd.rstrip()[:-1], shell=True, cwd=self.folder, env=self.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            self.background.append(proc)
            first = proc.stdout.readline()
            assert "listening on" in first, f"README line {no}: {command}\n{first}"
            return
        started = time.monotonic()
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=self.folder, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole command, not just its shell
            proc.communicate()
            raise AssertionError(f"README line {no} took over {COMMAND_TIMEOUT_S}s: {command}") from None
        self.timings.append((no, round(time.monotonic() - started, 1)))
        assert proc.returncode == 0, (f"README line {no} failed (exit {proc.returncode}): {command}\n"
                                      f"stdout: {stdout[-2000:]}\nstderr: {stderr[-3000:]}")

    def close(self) -> None:
        for proc in self.background:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


SNIPPETS = readme_snippets(README.read_text(encoding="utf-8"))


def test_the_readme_has_commands_to_run():
    runnable = [c for s in SNIPPETS if s.kind == "bash" for _, c in commands(s) if not skip_reason(c)]
    assert len(runnable) >= 10 and any("generate" in c for c in runnable)


def test_every_test_server_flag_is_documented():
    from synthledger.testing import server

    flags = {opt for action in server._parser()._actions for opt in action.option_strings if opt.startswith("--")}
    documented = set(re.findall(r"`(--[a-z0-9-]+)`", README.read_text()))
    assert flags - {"--help"} <= documented, sorted(flags - documented - {"--help"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from synthledger.testing.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def runnable(snippet: Snippet) -> bool:
    """Bash blocks, and Python blocks that use the package as a user would (`import synthledger`)."""
    return snippet.kind == "bash" or re.search(r"(?m)^import synthledger\s*$", "\n".join(t for _, t in snippet.lines)) is not None


@pytest.mark.slow
def test_the_readme_runs_top_to_bottom(tiny, tmp_path):
    """As a reader follows it: one folder, every block in order (a later block may use an earlier
    block's runs and servers)."""
    box = Sandbox(tmp_path, tiny)
    ran = 0
    try:
        for snippet in filter(runnable, SNIPPETS):
            if snippet.kind == "python":
                script = "\n".join(t for _, t in snippet.lines).replace("8399", str(box.port))
                (tmp_path / f"readme_{snippet.line}.py").write_text(script)
                box.run(snippet.line, f"python readme_{snippet.line}.py")
                ran += 1
                continue
            for no, command in commands(snippet):
                if skip_reason(command) is None:
                    box.run(no, command)
                    ran += 1
    finally:
        box.close()
        print("README line, seconds:", box.timings)
    assert ran >= 10
