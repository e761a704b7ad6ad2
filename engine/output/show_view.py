"""`show RUN` for a person: the summary (engine/summary.py) as short lines and rich tables.

No Python reprs, floats rounded, `-` for nothing; rejections grouped by kind with a count and one
example each; the data-quality figures per strategy with their warnings last, where they are seen.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

_HEADER_KEYS = ("id", "name", "status", "kind", "message")


def fmt(value: Any, none: str = "-") -> str:
    """One value as text: amounts compact, floats rounded, maps as k=v, lists comma-separated."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and {"queries", "input_tokens", "output_tokens", "usd"} <= set(value):
        return f"{value['queries']} q, {value['input_tokens']}/{value['output_tokens']} tok, ${value['usd']:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value) or "-"
    return str(value)


def _line(console: Console, label: str, items: dict[str, Any], none: str = "-") -> None:
    body = ", ".join(f"{k}: {fmt(v, none)}" for k, v in items.items()) or "-"
    console.print(f"[bold]{escape(label)}[/bold]: {escape(body)}", highlight=False, soft_wrap=True)


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "-"


def render(summary: dict[str, Any], console: Console, header: str) -> None:
    console.print(header, highlight=False, soft_wrap=True)
    if summary.get("message"):
        console.print(f"[bold]message[/bold]: {escape(str(summary['message']))}", highlight=False, soft_wrap=True)
    if summary.get("kind", "generate") == "generate" and "data_quality" in summary:
        _render_generate(summary, console)
    else:
        _render_sections(summary, console)


def _render_generate(s: dict[str, Any], console: Console) -> None:
    _line(console, "budget", s["budget"], none="no limit")
    _line(console, "queries", s["queries"])
    _line(console, "samples", s["samples"])
    _line(console, "diversity", s["diversity"])
    spend = Table("scope", "queries", "input tokens", "output tokens", "usd", title="spend", title_justify="left")
    for scope, amt in s["spend"].items():
        spend.add_row(scope, str(amt["queries"]), str(amt["input_tokens"]), str(amt["output_tokens"]),
                      f"${amt['usd']:.4f}")
    console.print(spend)
    dq = s["data_quality"]
    _quality_table(dq, console)
    _rejections_table(dq["overall"]["rejections"], console)
    for key, value in s.items():  # sections added by others (kept readable without knowing them)
        if key not in (*_HEADER_KEYS, "spend", "budget", "queries", "samples", "diversity", "rejected", "data_quality"):
            _line(console, key, value if isinstance(value, dict) else {"value": value})
    for warning in dq["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(warning['message'])}", highlight=False, soft_wrap=True)


def _quality_table(dq: dict[str, Any], console: Console) -> None:
    table = Table("strategy", "answers", "accepted", "agree with reference", "cut off (answers)",
                  "exact duplicates", "replies cut off, by role", title="data quality", title_justify="left")
    rows = list(dq["strategies"].items())
    if len(rows) > 1:
        rows.append(("all", dq["overall"]))
    for name, f in rows:
        roles = ", ".join(f"{role} {r['truncated']}/{r['replies']}" for role, r in f["roles"].items()) or "-"
        table.add_row(name, str(f["answers"]), str(f["accepted"]), _share(f["agreeing"], f["with_reference"]),
                      _share(f["truncated"], f["answers"]), _share(f["duplicates"], f["answers"]), roles)
    console.print(table)


def _rejections_table(groups: list[dict[str, Any]], console: Console) -> None:
    if not groups:
        console.print("[bold]rejections[/bold]: none", highlight=False)
        return
    table = Table("stage", "kind", "count", "example", title="rejections", title_justify="left")
    for g in groups:
        table.add_row(escape(g["stage"]), escape(g["kind"]), str(g["count"]), escape(g["example"]))
    console.print(table)


def _render_sections(s: dict[str, Any], console: Console) -> None:
    """Train, eval and other runs: scalars on one line, each map as a two-column table."""
    scalars = {k: v for k, v in s.items() if k not in _HEADER_KEYS and not isinstance(v, (dict, list))}
    if scalars:
        _line(console, "run", scalars)
    for key, value in s.items():
        if key in _HEADER_KEYS:
            continue
        if isinstance(value, dict):
            table = Table("key", "value", title=key, title_justify="left", show_header=False)
            for k, v in value.items():
                table.add_row(escape(str(k)), escape(fmt(v)))
            console.print(table)
        elif isinstance(value, list) and key == "loss_curve":
            points = [f"{p['step']}: {fmt(p['loss'])}" for p in value]
            shown = points if len(points) <= 12 else [*points[:6], "...", *points[-6:]]
            body = ", ".join(shown) if points else "none logged"
            console.print(f"[bold]loss by step[/bold] ({len(points)} points): {escape(body)}", highlight=False,
                          soft_wrap=True)
