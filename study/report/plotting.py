"""Pieces the report's figures share: the canvas, the tune-F1 axis, trial markers by
state, legend handles, point labels. Output is deterministic: Agg canvas, fixed sizes
and dpi, no PNG "Software" stamp, sorted iteration."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

DPI = 110
PNG_METADATA = {"Software": None}  # matplotlib would stamp its version into the bytes
ROLE_COLORS = {"teacher": "#1f77b4", "baseline": "#ff7f0e", "distilled": "#2ca02c"}
STATE_STYLE = {  # marker, face colour, edge colour, legend label
    "COMPLETE": ("o", "#2ca02c", "#2ca02c", "complete"),
    "PRUNED": ("v", "none", "#7f7f7f", "pruned (last reported score)"),
    "FAIL": ("x", "#d62728", "#d62728", "failed (no score)"),
    "RUNNING": ("s", "none", "#9467bd", "running"),
}
OTHER_STATE = ("D", "none", "#8c564b", "other state")


def figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png", dpi=DPI, metadata=PNG_METADATA)


def wrap(text: str, width: int = 30) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555",
            transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def label_point(ax, text: str, xy: tuple[float, float], offset: tuple[int, int],
                color: str) -> None:
    ax.annotate(text, xy, xytext=offset, textcoords="offset points", fontsize=9, color=color)


def score_range(values: list[float]) -> tuple[float, float, float]:
    """(low, high, row for trials without a score) on a tune-F1 axis."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 100.0)
    pad = max((hi - lo) * 0.1, 1.0)
    return lo - pad, hi + pad, lo - 2 * pad


def score_axis(ax, low: float, high: float, no_score: float, with_row: bool) -> None:
    """Tune-F1 y axis; with_row adds a bottom row, ticked `no score`, for unscored trials."""
    if not with_row:
        ax.set_ylim(low, high)
        return
    ax.set_ylim(no_score - (high - low) * 0.06, high)
    ticks = [t for t in MaxNLocator(nbins=6, steps=[1, 2, 5, 10]).tick_values(low, high)
             if low <= t <= high]
    ax.yaxis.set_major_locator(FixedLocator([no_score, *ticks]))
    ax.yaxis.set_major_formatter(
        FuncFormatter(lambda v, _: "no score" if abs(v - no_score) < 1e-9 else f"{v:g}"))
    ax.axhline((no_score + low) / 2, color="#999999", linewidth=0.8, linestyle=":")


def plot_trials(ax, trials: pd.DataFrame, xcol: str, no_score_y: float, best_no: Any) -> set:
    """Scatter trials by state; trials without a tune F1 go on the `no score` row."""
    seen = set()
    for state in sorted(trials["state"].unique()):
        sub = trials[trials["state"] == state]
        sub = sub[sub[xcol].notna()]
        if sub.empty:
            continue
        marker, face, edge, _ = STATE_STYLE.get(state, OTHER_STATE)
        y = sub["tune_f1"].fillna(no_score_y)
        kwargs = {"c": face} if marker == "x" else {"facecolors": face, "edgecolors": edge}
        ax.scatter(sub[xcol], y, marker=marker, s=42, linewidths=1.3, zorder=3, **kwargs)
        seen.add(state)
    authors = trials[(trials["arm"] == "authors") & trials[xcol].notna()]
    if not authors.empty:
        ax.scatter(authors[xcol], authors["tune_f1"].fillna(no_score_y), marker="o", s=150,
                   facecolors="none", edgecolors="#d62728", linewidths=1.6, zorder=4)
        seen.add(AUTHORS_KEY)
    best = trials[(trials["number"] == best_no) & trials["tune_f1"].notna() & trials[xcol].notna()]
    if not best.empty:
        ax.scatter(best[xcol], best["tune_f1"], marker="*", s=260, facecolors="gold",
                   edgecolors="black", linewidths=0.8, zorder=4)
    return seen


def state_handles(states: set) -> list:
    out = []
    for state in [*STATE_STYLE, *sorted(states - set(STATE_STYLE) - {AUTHORS_KEY})]:
        if state not in states:
            continue
        marker, face, edge, label = STATE_STYLE.get(state, OTHER_STATE)
        color = face if marker == "x" else edge
        out.append(Line2D([], [], linestyle="", marker=marker, markersize=7, color=color,
                          markerfacecolor=face if face != "none" else "none",
                          markeredgecolor=color, label=label))
    if AUTHORS_KEY in states:
        out.append(authors_handle())
    return out


AUTHORS_KEY = "authors"


def authors_handle() -> Line2D:
    return Line2D([], [], linestyle="", marker="o", markersize=11, markerfacecolor="none",
                  markeredgecolor="#d62728", markeredgewidth=1.6,
                  label="authors' setting (T = 2, α = 0.5 / 0.5)")


def best_handle() -> Line2D:
    return Line2D([], [], linestyle="", marker="*", markersize=14, markerfacecolor="gold",
                  markeredgecolor="black", label="best trial")
