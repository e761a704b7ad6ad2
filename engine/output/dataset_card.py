"""The dataset card (README.md) an `hf` export carries: where the data came from, in the layout the
Hugging Face Hub renders (YAML metadata, then prose and tables).

Everything comes from the run's own record (its config snapshot, its events), so the card cannot
disagree with `show`/`audit`. Endpoints (`base_url`) are left out: they may name private hosts.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ...store.eventstore import EventStore, RunInfo
from .summary import summarize
from ..ledger.events import RunStarted, recorded_seeds

__all__ = ["dataset_card"]

_DIMS = ("queries", "input_tokens", "output_tokens", "usd")


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _yaml_header(name: str, n_rows: int, licence: str, strategy: str, data_files: bool) -> str:
    lines = ["---", f"license: {licence}", f"pretty_name: {json.dumps(name)}",
             "task_categories:", "- text-generation", "tags:", "- synthetic", "- synthledger", f"- {strategy}",
             "size_categories:", f"- {_size_category(n_rows)}"]
    if data_files:  # the layout a hub push uploads (parquet under data/)
        lines += ["configs:", "- config_name: default", "  data_files:", "  - split: train", "    path: data/train-*"]
    return "\n".join(lines + ["---", ""])


def _models(config: dict[str, Any]) -> list[str]:
    rows = ["| role | provider | model | max_tokens | temperature |", "| --- | --- | --- | --- | --- |"]
    for role in ("teacher", "augmenter"):
        m = config.get(role)
        if m:
            rows.append(f"| {role} | {_cell(m.get('provider'))} | {_cell(m.get('model'))} | "
                        f"{_cell(m.get('max_tokens'))} | {_cell(m.get('temperature'))} |")
    return rows


def _budget(summary: dict[str, Any]) -> list[str]:
    limit = summary.get("budget") or {}
    spent = (summary.get("spend") or {}).get("spent") or {}
    return ["| | queries | input tokens | output tokens | usd |", "| --- | --- | --- | --- | --- |",
            "| limit | " + " | ".join("no limit" if limit.get(d) is None else _cell(limit[d]) for d in _DIMS) + " |",
            "| spent | " + " | ".join(_cell(spent.get(d)) for d in _DIMS) + " |"]


def _options(section: dict[str, Any] | None) -> str:
    rest = {k: v for k, v in (section or {}).items() if k != "name"}
    return ", ".join(f"`{k}` = {json.dumps(v)}" for k, v in rest.items()) or "defaults"


def _first_event(store: EventStore, run_id: str) -> dict[str, Any]:
    for ev in store.iter_events(run_id, types=[RunStarted.TYPE]):
        return ev.payload
    return {}


def _seed_count(config: dict[str, Any], started: dict[str, Any]) -> Any:
    """|S|: the seed set the run recorded, else the configured size. A jsonl or csv source without
    `size` takes every row, so the config alone says nothing (the card read `|S| = -`)."""
    seeds = recorded_seeds(started)
    return len(seeds) if seeds is not None else (config.get("seeds") or {}).get("size")


def dataset_card(store: EventStore, info: RunInfo, n_rows: int, *, licence: str | None = None,
                 data_files: bool = False, seed_rows: int = 0) -> str:
    """README.md text for an export of `info` with `n_rows` rows, `seed_rows` of them the seeds' own
    (`--include-seeds`); `data_files` adds the hub layout."""
    config = info.config or {}
    started = _first_event(store, info.id)
    summary = summarize(store, info)
    strategy = (config.get("strategy") or {}).get("name", "unknown")
    verifier = (config.get("verifier") or {}).get("name", "none")
    licence = licence or "unknown"
    created = datetime.fromtimestamp(info.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    samples = summary.get("samples") or {}
    body = [
        f"# {info.name}", "",
        f"Synthetic fine-tuning data made by synthledger run `{info.id}`: {n_rows - seed_rows} question/answer rows, "
        f"written by a teacher model under an exactly enforced budget and accepted by the `{verifier}` verifier"
        + (f", and {seed_rows} rows of the seed questions with their own answers (strategy `seed`, unverified). "
           if seed_rows else ". ") +
        "Every row carries its provenance (run, sample, seed, model, query ids, verification); the `messages` "
        "column is the conversation in the format TRL's `SFTTrainer` reads as is.", "",
        "## Provenance", "", "| | |", "| --- | --- |",
        f"| run | `{info.id}` ({_cell(info.name)}) |", f"| status | {info.status} |", f"| created | {created} |",
        f"| synthledger | {_cell(started.get('version'))} |", f"| config hash | `{info.config_hash}` |",
        f"| plan hash | `{_cell(started.get('plan_hash'))}` |",
        f"| samples | {samples.get('accepted', n_rows)} accepted of {samples.get('proposed', '-')} proposed"
        f" ({samples.get('accepted_unchecked', 0)} accepted unchecked) |", "",
        "## Strategy", "", f"`{strategy}` with {_options(config.get('strategy'))}; seeds from "
        f"`{(config.get('seeds') or {}).get('source', '-')}` (|S| = {_cell(_seed_count(config, started))}); "
        f"verifier `{verifier}` with {_options(config.get('verifier'))}.", "",
        "## Teacher", "", *_models(config), "",
        "## Budget", "", *_budget(summary), "",
        "## Licence", "",
        f"`{licence}` (set with `synthledger export --license`). The answers are outputs of the models above; "
        "their providers' terms of use apply to them.", "",
    ]
    return _yaml_header(info.name, n_rows, licence, strategy, data_files) + "\n".join(body)
