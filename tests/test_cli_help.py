"""`--help` answers what a new user asks: every option says what it does, options with a fixed set
of values list them, the main commands show examples, and `--version` says which release."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

import synthledger
from synthledger import cli

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")
MAIN_COMMANDS = ("generate", "runs", "show", "events", "audit", "export", "recommend", "train", "eval")
CHOICES = {("export", "--format"): ("jsonl", "chat", "openai", "hf"), ("recommend", "--augmenter"): ("weak", "strong"),
           ("recommend", "--verifiable"): ("yes", "no"), ("eval", "--task"): ("gsm8k", "multiple_choice", "freeform")}


def commands() -> dict:
    """The click command objects typer builds (typer ships its own click), by name."""
    return dict(typer.main.get_command(cli.app).commands)


def test_every_option_and_argument_has_help():
    missing = [f"{name} {p.opts[0] if p.opts else p.name}" for name, cmd in commands().items()
               for p in cmd.params if not (getattr(p, "help", None) or "").strip()]
    assert missing == []


@pytest.mark.parametrize("command, option", sorted(CHOICES))
def test_options_with_fixed_values_list_them(command, option):
    param = next(p for p in commands()[command].params if option in p.opts)
    shown = param.metavar or ""
    assert all(v in shown for v in CHOICES[(command, option)]), shown


@pytest.mark.parametrize("name", MAIN_COMMANDS)
def test_main_commands_show_an_example(name):
    assert re.search(r"Examples?:", commands()[name].help or ""), name


def test_version():
    r = subprocess.run([sys.executable, CLI, "--version"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and r.stdout.strip() == f"synthledger {synthledger.__version__}"


def test_rich_markup_does_not_eat_section_names():
    r = subprocess.run([sys.executable, CLI, "generate", "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    assert r.returncode == 0 and "[run] store" in r.stdout and "[run] name" in r.stdout


def _all_commands(group=None, prefix: str = "") -> dict:
    group = group or typer.main.get_command(cli.app)
    out = {}
    for name, cmd in group.commands.items():
        out[prefix + name] = cmd
        if hasattr(cmd, "commands"):
            out.update(_all_commands(cmd, f"{prefix}{name} "))
    return out


def test_no_help_text_names_a_section_that_rich_would_eat():
    # `[experiment]` unescaped is a markup tag to rich: `experiment run --help` read "( section)".
    eaten = re.compile(r"(?<!\\)\[[a-z_][a-z_.]*\]")
    found = [f"{name}: {text!r}" for name, cmd in _all_commands().items()
             for text in [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)] if eaten.search(text)]
    assert found == []
