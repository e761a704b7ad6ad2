"""The research's main figure for the user's task: accuracy against the query budget Q (log scale),
one line per strategy with its confidence band, one panel per seed-set size, the baselines as
horizontal lines and the measured crossover marked. Needs matplotlib (the `train` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...store.folders import make_parent
from ..errors import ExportError

COLORS = {"answer_augmentation": "#1f77b4", "question_rephrase": "#2ca02c", "new_question": "#d62728"}


def _panel(ax: Any, size: int, result: dict[str, Any]) -> None:
    rows = [r for r in result["summary"] if r["seed_size"] == size and r["accuracy"] is not None]
    for strategy in sorted({r["strategy"] for r in rows}):
        pts = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["budget"])
        qs = [r["budget"] for r in pts]
        color = COLORS.get(strategy)
        ax.plot(qs, [r["accuracy"] for r in pts], marker="o", label=strategy, color=color)
        if all(r["ci_low"] is not None for r in pts):
            ax.fill_between(qs, [r["ci_low"] for r in pts], [r["ci_high"] for r in pts], alpha=0.18, color=color)
    for base in result["baselines"]:
        if base["accuracy"] is None or base["seed_size"] not in (None, size):
            continue
        untrained = base["kind"] == "untrained"
        ax.axhline(base["accuracy"], color="gray", linestyle="--" if untrained else ":",
                   label="untrained student" if untrained else "seeds only (Q = 0)")
    for cross in result["crossovers"]:
        if cross["seed_size"] == size and cross["ratio"] is not None:
            q = cross["ratio"] * size
            ax.axvline(q, color="black", linewidth=1)
            ax.annotate(f"crossover\nBR {cross['ratio']:.1f}", (q, 0.02), xycoords=("data", "axes fraction"),
                        fontsize=8, ha="left")
            if cross["ci_low"] is not None:
                ax.axvspan(cross["ci_low"] * size, cross["ci_high"] * size, color="black", alpha=0.06)
    ax.set_xscale("log")
    budgets = sorted({r["budget"] for r in rows})
    if budgets:
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.xaxis.set_major_locator(FixedLocator(budgets))  # the grid's own budgets, as plain numbers
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(q) for q in budgets])
    # Over every panel's rows: the panels share one y axis, and the last one's limit is the one kept
    # (QA: a band up to 38.3% in the first panel was cut at 37%).
    top = max([r["ci_high"] or r["accuracy"] or 0 for r in result["summary"]]
              + [b["accuracy"] or 0 for b in result["baselines"]] + [0.05])
    ax.set_ylim(0, min(1.0, top * 1.15 + 0.01))
    ax.set_title(f"|S| = {size}")
    ax.set_xlabel("teacher queries Q (log scale)")
    ax.grid(True, which="both", alpha=0.3)


def plot(result: dict[str, Any], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["seed_size"] for r in result["summary"]})
    if not sizes:
        raise ValueError(f"experiment {result['experiment']['name']!r} has no grid cells to plot")
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(7.0, 5.2 * len(sizes)), 4.6), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        _panel(ax, size, result)
    axes[0][0].set_ylabel("held-out accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=min(len(seen), 3), fontsize=8, frameon=False)
    held = result.get("heldout") or {}
    fig.suptitle(f"{result['experiment']['name']}: held-out accuracy vs teacher-query budget\n"
                 f"{held.get('spec')}, {held.get('n')} examples; bands: 95% paired-bootstrap CI", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.98))
    out = Path(out)
    try:
        reason = make_parent(out) or (f"{out} is a folder, not a file" if out.is_dir() else None)
        if reason is None:
            fig.savefig(out, dpi=120)
    except OSError as exc:  # the path the user gave, in one line (--out under a file, a full disk)
        reason = exc.strerror or str(exc)
    finally:
        plt.close(fig)
    if reason is not None:
        raise ExportError(f"cannot write {out}: {reason}")
    return out
