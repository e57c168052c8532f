"""The report's figures: one function each, from the same typed inputs as the markdown."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from study.report.inputs import ROLES, Inputs, ModelMetrics
from study.report.numbers import LABELS, PAPER, best_so_far, dev_scores, importances_missing
from study.report.plotting import (
    ROLE_COLORS,
    best_handle,
    figure,
    label_point,
    no_data,
    plot_trials,
    score_axis,
    score_range,
    state_handles,
    wrap,
)

AXIS_LABELS = {
    "temperature": "temperature T (log scale)",
    "alpha_ce": "α_ce (weight of the distillation KL term)",
    "alpha_squad": "α_squad (weight of the gold-span CE term)",
    "learning_rate": "learning rate (log scale)",
}
SCORE_COLORS = {"em": "#9ecae1", "f1": "#3182bd"}


def fig_scores(inp: Inputs) -> Figure:
    scores = dev_scores(inp)
    fig = figure(8.0, 5.2)
    ax = fig.add_subplot()
    width = 0.38
    for i, role in enumerate(ROLES):
        for j, (key, paper_value) in enumerate((("em", PAPER[role][2]), ("f1", PAPER[role][3]))):
            x = i + (j - 0.5) * width
            value, ci = scores[role][key], scores[role][f"{key}_ci"]
            yerr = None if ci is None else [[max(value - ci[0], 0)], [max(ci[1] - value, 0)]]
            ax.bar(x, value, width * 0.95, color=SCORE_COLORS[key], yerr=yerr, capsize=4,
                   error_kw={"elinewidth": 1.2, "ecolor": "black"})
            ax.text(x, value / 2, f"{value:.1f}", ha="center", va="center", fontsize=9,
                    color="black" if key == "em" else "white", fontweight="bold")
            ax.hlines(paper_value, x - width / 2, x + width / 2, colors="black",
                      linestyles="--", linewidth=1.5)
            ax.text(x, paper_value + 1.0, f"paper {paper_value}", ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(range(len(ROLES)))
    ax.set_xticklabels(
        [f"{LABELS[r]}\n{wrap(inp.models[r].model)}\npaper: {PAPER[r][0]}" for r in ROLES],
        fontsize=9)
    ax.set_ylim(0, 100)
    ax.set_ylabel("SQuAD v1.1 score on dev (%)")
    runs = ("\n(baseline and distilled: mean over seeds, 95% CI bars)" if inp.seeds is not None
            else "\n(single runs)")
    ax.set_title("Dev exact match and F1 against the paper's counterparts" + runs, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles = [Patch(color=SCORE_COLORS["em"], label="exact match (EM)"),
               Patch(color=SCORE_COLORS["f1"], label="F1"),
               Line2D([], [], color="black", linestyle="--", label="paper's value, same metric")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9)
    return fig


def fig_history(inp: Inputs) -> Figure:
    trials, best_no = inp.trials, inp.metrics.search.best_trial
    fig = figure(8.0, 5.0)
    ax = fig.add_subplot()
    ax.set_title("Search history: tune F1 per trial", fontsize=11)
    ax.set_xlabel("trial number")
    ax.set_ylabel("F1 on tune (%)")
    if trials.empty:
        no_data(ax, "no trials in trials.csv")
        return fig
    t, b = inp.models["teacher"].tune.f1, inp.models["baseline"].tune.f1
    lo, hi, no_score = score_range([*trials["tune_f1"].tolist(), t, b])
    score_axis(ax, lo, hi, no_score, trials["tune_f1"].isna().any())
    handles = state_handles(plot_trials(ax, trials, "number", no_score, best_no))
    best = best_so_far(trials)
    if best.notna().any():
        ax.step(trials["number"], best, where="post", color="#2ca02c", linewidth=1.6, zorder=2)
        handles.append(Line2D([], [], color="#2ca02c", linewidth=1.6, label="best so far"))
    if best_no is not None and (trials["number"] == best_no).any():
        handles.append(best_handle())
    for role, value, style in (("teacher", t, "--"), ("baseline", b, ":")):
        ax.axhline(value, color=ROLE_COLORS[role], linestyle=style, linewidth=1.4)
        handles.append(Line2D([], [], color=ROLE_COLORS[role], linestyle=style, linewidth=1.4,
                              label=f"{role} tune F1 ({value:.1f})"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8.5)
    return fig


def fig_params(inp: Inputs) -> Figure:
    trials, best_no = inp.trials, inp.metrics.search.best_trial
    names = ["temperature", "alpha_ce", "alpha_squad"]
    if trials["learning_rate"].notna().any():
        names.append("learning_rate")
    fig = figure(4.0 * len(names), 4.4)
    axes = fig.subplots(1, len(names), sharey=True)
    fig.suptitle("Tune F1 against each searched parameter (one point per trial)", fontsize=11)
    lo, hi, no_score = score_range(trials["tune_f1"].tolist())
    states: set = set()
    for ax, name in zip(axes, names):
        ax.set_xlabel(AXIS_LABELS[name], fontsize=9)
        ax.grid(alpha=0.3)
        if trials.empty:
            no_data(ax, "no trials")
            continue
        score_axis(ax, lo, hi, no_score, trials["tune_f1"].isna().any())
        states |= plot_trials(ax, trials, name, no_score, best_no)
        if name.startswith("alpha_"):
            ax.set_xlim(-0.04, 1.04)  # the weights' whole allowed range
        elif (trials[name] > 0).any():
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].set_ylabel("F1 on tune (%)")
    handles = state_handles(states)
    if best_no is not None and (trials["number"] == best_no).any():
        handles.append(best_handle())
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8.5)
    return fig


def fig_importances(inp: Inputs) -> Figure:
    fig = figure(7.0, 3.6)
    ax = fig.add_subplot()
    ax.set_title("Parameter importance for tune F1 (Optuna)", fontsize=11)
    missing = importances_missing(inp)
    if missing is not None:
        no_data(ax, wrap(missing, 60))
        return fig
    items = sorted(inp.importances.items(), key=lambda kv: (kv[1], kv[0]))  # largest on top
    y = list(range(len(items)))
    ax.barh(y, [v for _, v in items], color="#3182bd", height=0.6)
    ax.set_yticks(y)
    ax.set_yticklabels([k for k, _ in items])
    top = max([v for _, v in items] + [1e-9])
    for i, (_, v) in enumerate(items):
        ax.text(v + top * 0.01, i, f"{v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("importance (share of tune-F1 variation explained; unitless)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def fig_curves(inp: Inputs) -> Figure:
    fig = figure(8.0, 4.6)
    ax = fig.add_subplot()
    ax.set_title("Learning curves: tune F1 during training", fontsize=11)
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel("F1 on tune (%)")
    handles = []
    for role, marker in (("baseline", "o"), ("distilled", "s")):
        sub = inp.curves[(inp.curves["role"] == role) & inp.curves["tune_f1"].notna()]
        if not sub.empty:
            handles += ax.plot(sub["step"], sub["tune_f1"], marker=marker, markersize=5,
                               color=ROLE_COLORS[role], linewidth=1.6,
                               label=f"{role} (final {sub['tune_f1'].iloc[-1]:.1f})")
    t = inp.models["teacher"].tune.f1
    handles.append(ax.axhline(t, color=ROLE_COLORS["teacher"], linestyle="--", linewidth=1.4,
                              label=f"teacher, end of training ({t:.1f})"))
    if len(handles) == 1:
        ax.text(0.5, 0.5, "no baseline or distilled rows in curves.csv", ha="center",
                va="center", transform=ax.transAxes, color="#555555")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    return fig


def _label_offsets(models: dict[str, ModelMetrics], key) -> dict[str, tuple[int, int]]:
    """Label above the higher-F1 point and below the lower one where two share an x."""
    order = sorted(models, key=lambda r: (models[r].dev.f1, r))
    out = {}
    for role, m in models.items():
        twins = [models[o] for o in order if o != role and key(models[o]) is not None
                 and key(m) is not None
                 and abs(key(models[o]) - key(m)) <= 0.15 * max(abs(key(m)), 1e-9)]
        if not twins:
            out[role] = (8, -3)
        else:
            out[role] = (8, 7) if all(m.dev.f1 >= o.dev.f1 for o in twins) else (8, -14)
    return out


def _latency_panel(fig: Figure, ax, models: dict[str, ModelMetrics]) -> None:
    """Each model at its median latency at batch 1, a bar to its 95th percentile."""
    lat = [m.latency for m in models.values() if m.latency.batch1_median_ms is not None]
    if not lat:
        no_data(ax, "latency not measured")
        return
    offsets = _label_offsets(models, lambda m: m.latency.batch1_median_ms)
    for role, m in models.items():
        median, p95 = m.latency.batch1_median_ms, m.latency.batch1_p95_ms
        if median is None:
            continue
        if p95 is not None:
            ax.plot([median, p95], [m.dev.f1] * 2, color=ROLE_COLORS[role], linewidth=1.5,
                    alpha=0.6)
        ax.scatter([median], [m.dev.f1], marker="o", s=60, color=ROLE_COLORS[role], zorder=3)
        label_point(ax, f"{LABELS[role]} ({m.dev.f1:.1f})", (max(median, p95 or median), m.dev.f1),
                    offsets[role], ROLE_COLORS[role])
    ax.set_xlim(0, max(max(x.batch1_median_ms, x.batch1_p95_ms or 0) for x in lat) * 1.45)
    fig.legend(handles=[
        Line2D([], [], linestyle="", marker="o", color="#555555",
               label="median latency, one question at a time (batch 1)"),
        Line2D([], [], color="#555555", linewidth=1.5, alpha=0.6, label="to its 95th percentile"),
    ], loc="outside lower center", ncol=2, fontsize=8.5)


def fig_tradeoff(inp: Inputs) -> Figure:
    models = inp.models
    fig = figure(11.0, 4.8)
    ax_lat, ax_par = fig.subplots(1, 2, sharey=True)
    fig.suptitle("Accuracy against cost: dev F1 (single run) vs latency and size", fontsize=11)
    f1s = [m.dev.f1 for m in models.values()]
    span = max(max(f1s) - min(f1s), 2.0)
    _latency_panel(fig, ax_lat, models)
    ax_lat.set_xlabel("latency per question at batch 1 (ms)")
    ax_lat.set_ylabel("F1 on dev (%)")
    ax_lat.set_title("F1 against latency", fontsize=10)
    ax_lat.grid(alpha=0.3)
    offsets = _label_offsets(models, lambda m: m.parameters)
    for role, m in models.items():
        x = m.parameters / 1e6
        ax_par.scatter([x], [m.dev.f1], s=60, color=ROLE_COLORS[role], zorder=3)
        label_point(ax_par, f"{LABELS[role]} ({m.dev.f1:.1f})", (x, m.dev.f1), offsets[role],
                    ROLE_COLORS[role])
    ax_par.set_xlim(0, max(m.parameters for m in models.values()) / 1e6 * 1.45)
    ax_par.set_xlabel("parameters (millions)")
    ax_par.set_title("F1 against model size", fontsize=10)
    ax_par.grid(alpha=0.3)
    ax_lat.set_ylim(min(f1s) - 0.45 * span, max(f1s) + 0.45 * span)
    return fig


FIGURES = {
    "scores": fig_scores,
    "history": fig_history,
    "params": fig_params,
    "importances": fig_importances,
    "curves": fig_curves,
    "tradeoff": fig_tradeoff,
}
