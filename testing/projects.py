"""A small run project on disk (seed file + run config) pointed at a teacher server.

Tests and examples that need "a real run against the test server" all need the same two files;
one writer keeps their shape in one place."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_experiment", "write_project"]


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


def write_experiment(folder: Path, server_url: str, student: str | Path, *, name: str = "grid", seeds: int = 8,
                     seed_sizes: tuple[int, ...] = (4,), budgets: tuple[int, ...] = (4, 8, 16),
                     strategies: tuple[str, ...] = ("answer_augmentation", "new_question"), heldout: int = 8,
                     replicates: int = 1, extra: str = "") -> Path:
    """An experiment against a teacher server: seeds and a held-out set (arithmetic, disjoint), a
    base run config, a train config for `student` and the grid file; return the grid file.

    Near-duplicate control is off: which of two similar questions it keeps depends on the order
    answers arrive in, and without it a larger budget's cell extends a smaller one's plan exactly,
    so tests can count what reuse saves to the query."""
    write_project(folder, server_url, name=f"{name}-base", seeds=seeds)  # the seed file
    # The base of every cell: the grid sets [strategy] and [budget] queries.
    (folder / "run.toml").write_text(f"""[run]
name = "{name}-base"

[seeds]
source = "jsonl"
path = "seeds.jsonl"

[teacher]
provider = "openai-compatible"
base_url = "{server_url}/v1"
model = "test-teacher"
max_tokens = 64

[dedupe]
enabled = false
""")
    (folder / "heldout.jsonl").write_text("".join(
        json.dumps({"question": f"Bo has {i} cups and breaks one. How many cups are left?", "answer": str(i - 1)})
        + "\n" for i in range(10, 10 + heldout)))
    (folder / "train.toml").write_text(f"""[trainer]
name = "lora_sft"
student = "{student}"
epochs = 1
batch_size = 4
max_length = 128
learning_rate = 1e-3

[data]
include_seeds = true
""")
    grid = folder / "grid.toml"
    grid.write_text(f"""[experiment]
name = "{name}"
base = "run.toml"
train = "train.toml"
strategies = {json.dumps(list(strategies))}
seed_sizes = {json.dumps(list(seed_sizes))}
budgets = {json.dumps(list(budgets))}
replicates = {replicates}
workdir = "work"
bootstrap = 200

[experiment.strategy_options.new_question]
check_well_posed = false

[experiment.eval]
heldout = "heldout.jsonl"
max_new_tokens = 8
batch_size = 8

[experiment.executor]
parallel = 2
{extra}""")
    return grid
