"""`experiment show`: the result object as tables a person reads."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..run.quality_gate import high_truncation, low_agreement


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(row: dict[str, Any]) -> str:
    if row.get("ci_low") is None:
        return "-"
    return f"{100 * row['ci_low']:.1f}-{100 * row['ci_high']:.1f}"


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def render(result: dict[str, Any], console: Console) -> None:
    exp = result["experiment"]
    held = result.get("heldout") or {}
    console.print(f"[bold]experiment {escape(exp['name'])}[/bold] ({exp['id']}) status={exp['status']}; "
                  f"held-out {escape(str(held.get('spec')))} ({held.get('n')} examples)", highlight=False)
    table = Table("strategy", "|S|", "Q", "BR", "accuracy", "95% CI", "reps", "rows", "paid", "reused", "$",
                  "agree", "cut", "dup",
                  title="cells (accuracy: mean over replicates; CI: paired bootstrap over examples and replicates; "
                        "agree / cut / dup: the teacher's answers agreeing with seed references, cut off, duplicated)")
    for row in result["summary"]:
        q = row.get("quality") or {}
        table.add_row(row["strategy"], str(row["seed_size"]), str(row["budget"]), _num(row["ratio"], 2),
                      _pct(row["accuracy"]), _ci(row), str(row["replicates"]), _num(row["rows"]),
                      str(row["paid_queries"]), str(row["reused_queries"]), f"{row['usd']:.4f}",
                      _pct(q.get("agreement")), _pct(q.get("truncation_rate")), _pct(q.get("duplicate_rate")))
    console.print(table)
    for line in quality_lines(result["summary"]) + lost_lines(result["cells"]) + heldout_lines(result):
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)
    if result["baselines"]:
        base = Table("baseline", "|S|", "accuracy", "95% CI", "reps", "rows", title="baselines")
        for row in result["baselines"]:
            label = "untrained student" if row["kind"] == "untrained" else "seeds only (Q = 0)"
            base.add_row(label, "-" if row["seed_size"] is None else str(row["seed_size"]), _pct(row["accuracy"]),
                         _ci(row), str(row["replicates"]), _num(row["rows"]))
        console.print(base)
    for line in crossover_lines(result):
        console.print(escape(line), highlight=False)
    paid, reused = result["paid"], result.get("reused") or {}
    console.print(f"paid: {paid['queries']} queries, {paid['input_tokens']}/{paid['output_tokens']} tokens, "
                  f"${paid['usd']:.4f}; reused from the store: {reused.get('queries', 0)} queries", highlight=False)
    failed = [c for c in result["cells"] + result.get("baseline_cells", []) if c["status"] != "finished"]
    if failed:
        console.print(f"[yellow]{len(failed)} cell(s) not finished[/yellow]: "
                      + escape(", ".join(f"{c['id']} ({c['status']})" for c in failed[:8])), highlight=False)


def lost_lines(cells: list[dict[str, Any]]) -> list[str]:
    """Cells whose generation lost queries in flight, to a kill or to a teacher's connection that
    dropped after sending: each was paid for and never answered (invariant: an unknown outcome
    counts as spent), so the cell trained on fewer answers than its budget, and its score is not
    quite the uninterrupted grid's. The wording holds for either cause: the count cannot tell them apart."""
    return [f"{c['id']}: {c['lost_queries']} queries were sent and never answered (a process was killed or the "
            f"connection dropped while they were out); counted as paid, so it trained on fewer answers than "
            f"Q = {c['budget']}" for c in cells if c.get("lost_queries")]


# Below this many held-out examples a 95% interval is wider than most differences a grid measures.
SMALL_HELDOUT = 30


def heldout_lines(result: dict[str, Any]) -> list[str]:
    """A warning when the held-out set is too small for its intervals to separate cells (a table with
    confidence intervals reads as a measurement whatever n is), and one naming the cells scored on
    fewer examples than the rest (held-out questions that were in their own training data)."""
    n = (result.get("heldout") or {}).get("n")
    out = []
    if n and n < SMALL_HELDOUT:
        out.append(f"the held-out set has only {n} examples: at that size the 95% confidence intervals are too wide "
                   f"to tell most cells apart (use {SMALL_HELDOUT} or more, a few hundred to compare strategies)")
    short = [c for c in result.get("cells", []) + result.get("baseline_cells", []) if n and c.get("n") is not None and c["n"] < n]
    if short:
        named = ", ".join(f"{c['id']} on {c['n']}" for c in short[:4]) + (", ..." if len(short) > 4 else "")
        out.append(f"{len(short)} cell(s) were scored on fewer than the {n} held-out examples, leaving out held-out "
                   f"questions that were in their own training data (new questions can write them): {named}")
    return out


def crossover_lines(result: dict[str, Any]) -> list[str]:
    if not result["crossovers"]:
        return ["crossover: the grid needs answer_augmentation and new_question (or question_rephrase) to measure one"]
    out = []
    for c in result["crossovers"]:
        if c["ratio"] is None:
            out.append(f"crossover at |S|={c['seed_size']} ({c['from']} -> {c['to']}): none in this grid; {c['note']}")
        else:
            ci = ("" if c["ci_low"] is None else
                  f", 95% CI {c['ci_low']:.1f}-{c['ci_high']:.1f} (found in {100 * c['support']:.0f}% of bootstrap draws)")
            again = f"; {c['note']}" if c.get("note") else ""
            out.append(f"crossover at |S|={c['seed_size']} ({c['from']} -> {c['to']}): BR {c['ratio']:.1f}{ci}{again}")
    return out


def quality_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Cells whose data a person should look at before trusting their accuracy: the teacher's
    answers mostly disagree with the seeds' references, or many were cut off."""
    low, cut = [], []
    for row in rows:
        q = row.get("quality") or {}
        label = f"{row['strategy']} |S|={row['seed_size']} Q={row['budget']}"
        if low_agreement(q.get("agreeing", 0), q.get("with_reference", 0)):
            low.append(f"{label} ({100 * (q.get('agreement') or 0):.0f}%)")
        if high_truncation(q.get("truncated", 0), q.get("answers", 0)):
            cut.append(f"{label} ({100 * q['truncation_rate']:.0f}%)")
    out = []
    if low:
        out.append("low agreement with the seeds' references in " + ", ".join(low)
                   + ": these cells may be comparing noise (`show` on the cell's generate run says more)")
    if cut:
        out.append("many answers cut off at max_tokens in " + ", ".join(cut) + ": raise the teacher's max_tokens")
    return out
