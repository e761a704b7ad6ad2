"""The core engine needs no torch: generate, audit, export, show and plugins run in a process
where torch, transformers and peft cannot be imported at all (as on an install without the
`train` / `local` extras)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")

# Runs cli.py with an import hook that refuses the heavy packages, so any import of them fails loudly.
NO_TORCH = """
import importlib.abc, runpy, sys
BLOCKED = {"torch", "transformers", "peft", "accelerate"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("SYNTHLEDGER_STORE", None)
    return subprocess.run([sys.executable, "-c", NO_TORCH, CLI, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_generate_audit_export_show_plugins_without_torch(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    with run_in_thread() as srv:
        write_project(tmp_path, srv.url, name="no-torch", queries=8)
        gen = cli("generate", "-c", "run.toml", "--no-progress", "--store", store, cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.splitlines()[-1].split()[2] == "budget_exhausted"
    audit = cli("audit", "no-torch", "--json", "--store", store, cwd=tmp_path)
    assert audit.returncode == 0 and json.loads(audit.stdout)["spent"]["queries"] == 8, audit.stderr
    export = cli("export", "no-torch", "--format", "chat", "--out", "d.jsonl", "--store", store, cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "d.jsonl").read_text().strip()
    assert cli("show", "no-torch", "--store", store, cwd=tmp_path).returncode == 0
    plugins = cli("plugins", cwd=tmp_path)
    assert plugins.returncode == 0 and "lora_sft" in plugins.stdout, plugins.stderr
    # The blocker is real: what does need torch says so.
    train = cli("train", "no-torch", "--store", store, "--no-progress", cwd=tmp_path)
    message = " ".join(train.stderr.split())
    assert train.returncode == 2 and "Traceback" not in message, message
    assert "pip install 'synthledger[train]'" in message
    runs = json.loads(cli("runs", "--json", "--store", store, cwd=tmp_path).stdout)
    assert all(r["status"] != "running" for r in runs), runs  # nothing left half-written
