"""The README's "Writing a plugin" example, copied verbatim into a package of its own, installed
apart from synthledger, and used for a real run against the test server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synthledger.testing.projects import write_project
from synthledger.testing.server import run_in_thread

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / "cli.py")

PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "my-pkg"
version = "1.0.0"
dependencies = []

[project.entry-points.synthledger]
my_pkg = "my_pkg.plugin"

[tool.setuptools]
packages = ["my_pkg"]
"""


def readme_plugin() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Writing a plugin"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README's plugin section has no python block"
    return code.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("readme_plugin")
    src = work / "src"
    (src / "my_pkg").mkdir(parents=True)
    (src / "my_pkg" / "__init__.py").write_text("")
    (src / "my_pkg" / "plugin.py").write_text(readme_plugin())
    (src / "pyproject.toml").write_text(PYPROJECT)
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                    "--no-index", "--disable-pip-version-check", "--target", str(target), str(src)],
                   check=True, capture_output=True, text=True, timeout=120)
    return str(target)


def cli(*args: str, site: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           "PYTHONPATH": site + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("SYNTHLEDGER_PLUGINS", None)
    env.pop("SYNTHLEDGER_STORE", None)
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def test_the_readme_plugin_is_listed_from_its_own_distribution(installed):
    r = cli("plugins", "--json", site=installed)
    assert r.returncode == 0, r.stderr
    mine = [p for p in json.loads(r.stdout) if p["name"] == "socratic"]
    assert mine == [{"kind": "strategies", "name": "socratic", "plugin": "my_pkg", "distribution": "my-pkg",
                     "version": "1.0.0"}]


def test_the_readme_plugin_generates_under_its_budget(installed, tmp_path):
    with run_in_thread() as srv:
        write_project(tmp_path, srv.url, name="socratic-run", queries=6, strategy="socratic")
        store = f"sqlite:///{tmp_path / 'store.db'}"
        gen = cli("generate", "-c", "run.toml", "--no-progress", "--store", store, site=installed, cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.splitlines()[-1].split()[2] == "budget_exhausted"
    audit = cli("audit", "socratic-run", "--json", "--store", store, site=installed)
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["ok"], audit.stdout
    assert report["by_strategy"]["socratic"]["queries"] == 6  # two queries per item, three items
    export = cli("export", "socratic-run", "--format", "chat", "--out", str(tmp_path / "d.jsonl"), "--store", store,
                 site=installed)
    assert export.returncode == 0, export.stderr
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 3
