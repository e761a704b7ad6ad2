"""A small run project on disk (seed file + run config) pointed at a teacher server.

Tests and examples that need "a real run against the test server" all need the same two files;
one writer keeps their shape in one place."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_project"]


def write_project(folder: Path, server_url: str, *, name: str = "project", seeds: int = 4, queries: int = 8,
                  max_tokens: int = 64, strategy: str = "answer_augmentation", extra: str = "") -> Path:
    """Write `seeds.jsonl` (GSM-style arithmetic with `#### N` answers) and `run.toml`; return the config.

    `max_tokens` leaves room for the test server's longest reply (33 words): answers cut off at the
    limit are rejected. `extra` is TOML appended to the config (more sections, or keys of a new one)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "seeds.jsonl").write_text("".join(
        json.dumps({"question": f"Ann has {i} pens and buys 2 more. How many pens now?", "answer": f"#### {i + 2}"})
        + "\n" for i in range(seeds)))
    config = folder / "run.toml"
    config.write_text(f"""[run]
name = "{name}"

[seeds]
source = "jsonl"
path = "seeds.jsonl"

[teacher]
provider = "openai-compatible"
base_url = "{server_url}/v1"
model = "test-teacher"
max_tokens = {max_tokens}

[budget]
queries = {queries}

[strategy]
name = "{strategy}"
{extra}""")
    return config
