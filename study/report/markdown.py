"""report.md: the numbers and tables computed here, laid out by templates/report.md.j2."""

from __future__ import annotations

import math
from typing import Any

import jinja2

from study.report.findings import findings, half_width, verdict
from study.report.inputs import ROLES, Inputs
from study.report.numbers import (
    LABELS,
    PAPER,
    PAPER_GAP,
    PAPER_V1_DISTILLED,
    dev_scores,
    gap_recovered,
    importances_missing,
)

ROW_LABELS = {
    "teacher": "Teacher",
    "baseline": "Baseline (task-agnostic, no teacher)",
    "distilled": "Distilled (best trial)",
}


# ---------------------------------------------------------------------------- formatting
def _f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _g(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.4g}"


def _ms(x: float | None) -> str:
    if x is None:
        return "not measured"
    return f"{x:.1f} ms" if x >= 1 else f"{x:.2f} ms"


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def _pct(x: float | None) -> str:
    # round() first: a share just below 0 is "0%", not "-0%".
    return "n/a" if x is None else f"{round(x)}%"


def _share(x: float) -> str:
    """A share to one decimal, never "-0.0%"."""
    return f"{round(x, 1) + 0.0:.1f}%"


def _with_ci(mean: float, ci: tuple[float, float] | None) -> str:
    """`mean ± half-width` for a symmetric CI, `mean [lo, hi]` otherwise."""
    if ci is None:
        return _f(mean)
    lo, hi = ci
    if abs((mean - lo) - (hi - mean)) < 0.05:
        return f"{mean:.1f} ± {(hi - lo) / 2:.1f}"
    return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]], align: str = "") -> str:
    """A markdown table; cells are escaped, the header is written as given."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- tables
def results_table(inp: Inputs, scores: dict) -> str:
    header = ["Model", "Ours", "dev EM", "dev F1", "Parameters", "Paper (SQuAD v1.1 dev EM / F1)"]
    if inp.seeds is not None:
        header[2:4] = ["dev EM (± 95% CI)", "dev F1 (± 95% CI)"]
    rows = []
    for role in ROLES:
        s, m = scores[role], inp.models[role]
        pname, pparams, pem, pf1 = PAPER[role]
        rows.append([f"**{_row_label(inp, role)}**", m.model, _with_ci(s["em"], s["em_ci"]),
                     _with_ci(s["f1"], s["f1_ci"]), _millions(m.parameters),
                     f"{pname} ({pparams}M): {pem} / {pf1}"])
    return table(header, rows, "llrrrl")


def _row_label(inp: Inputs, role: str) -> str:
    trial = inp.metrics.distilled.trial
    if role == "distilled" and trial is not None:
        return f"Distilled (best trial, #{trial})"
    return ROW_LABELS[role]


SEED_ARMS = {"baseline": "Baseline (no teacher)", "authors": "Authors' setting (T = 2, 0.5 / 0.5)",
             "distilled": "Searched best"}
PAIRED_LABELS = {"authors_minus_baseline": "Authors' setting − baseline",
                 "distilled_minus_authors": "Searched best − authors' setting",
                 "distilled_minus_baseline": "Searched best − baseline"}


def seeds_table(inp: Inputs) -> str:
    rows = []
    for arm, label in SEED_ARMS.items():
        r = getattr(inp.seeds, arm)
        if r is None:
            continue
        (elo, ehi), (flo, fhi) = r.ci95.exact_match, r.ci95.f1
        rows.append([label, f"{r.mean.exact_match:.1f} [{elo:.1f}, {ehi:.1f}]",
                     f"{r.mean.f1:.1f} [{flo:.1f}, {fhi:.1f}]",
                     ", ".join(f"{v:.1f}" for v in r.f1)])
    return table(["Arm", "dev EM mean [95% CI]", "dev F1 mean [95% CI]", "dev F1 per seed"],
                 rows)


def _ci(ci) -> str:
    return "–" if ci is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"


def paired_table(inp: Inputs) -> str:
    rows = [[PAIRED_LABELS.get(name, name), f"{d.f1_diff:+.1f}", _ci(d.ci95),
             f"±{half_width(d):.1f}",
             "–" if d.per_seed is None else ", ".join(f"{v:+.1f}" for v in d.per_seed),
             _ci(d.seed_t_ci95), verdict(d, "yes (positive)", "yes (negative)")]
            for name, d in inp.seeds.paired.items()]
    what = ("seeds × questions" if all("seeds" in d.resampled for d in inp.seeds.paired.values())
            else "questions only")
    return table(["Paired difference (dev F1)", "Mean", f"95% CI ({what})", "Half-width",
                  "Per seed", "Check: t over seeds", "Distinguishable from 0"], rows, "lrrrrrl")


def calibration_lines(inp: Inputs) -> list[str]:
    lines = []
    for name, d in inp.seeds.paired.items():
        c = d.calibration
        if c is None:
            continue
        lines.append(
            f"{PAIRED_LABELS.get(name, name)}: variance components seed SD {c.sd_seed:.2f}, "
            f"question SD {c.sd_question:.1f}, residual SD {c.sd_residual:.1f}; in {c.studies} "
            f"simulated studies with no true difference the interval excluded 0 in "
            f"{c.excludes_zero_with_no_difference:.1%} (coverage {c.coverage:.1%}); with a true "
            f"difference of {c.effect_twice_seed_sd:.1f} (twice the seed SD), in "
            f"{c.excludes_zero_with_that_effect:.1%}")
    return lines


def gap_lines(inp: Inputs) -> list[str]:
    gaps = (inp.seeds.gap_recovered or {}) if inp.seeds else {}
    return [f"{SEED_ARMS[arm]}: {_share(g.estimate)} [{_share(g.ci95[0])}, "
            f"{_share(g.ci95[1])}] of the gap to the teacher (dev F1 {g.teacher_f1:.1f}, one run, "
            "held fixed)"
            for arm, g in gaps.items()]


def trials_table(inp: Inputs) -> str:
    lr = inp.trials["learning_rate"].notna().any()
    header = (["Trial", "State", "T", "α_ce", "α_squad"] + (["Learning rate"] if lr else [])
              + ["Tune EM", "Tune F1", "Duration", "MLflow run"])
    best_no = inp.metrics.best_trial
    rows = []
    for row in inp.trials.itertuples(index=False):
        num = f"**{row.number}** (best)" if row.number == best_no else str(row.number)
        cells = [num, row.state or "?", _g(row.temperature), _g(row.alpha_ce), _g(row.alpha_squad)]
        if lr:
            cells.append("–" if math.isnan(row.learning_rate) else f"{row.learning_rate:.2e}")
        dur = "–" if math.isnan(row.duration_s) else f"{row.duration_s:.0f} s"
        cells += [_f(row.tune_exact_match), _f(row.tune_f1), dur, row.mlflow_run_id or "–"]
        rows.append([c if c != "nan" else "–" for c in cells])
    return table(header, rows, "llrrr" + ("r" if lr else "") + "rrrl")


def _per_s(x: float | None) -> str:
    return "not measured" if x is None else f"{x:.1f} /s"


def cost_table(inp: Inputs) -> str:
    rows = [[LABELS[r], m.model, _millions(m.parameters), _ms(m.latency.batch1_median_ms),
             _ms(m.latency.batch1_p95_ms), _per_s(m.latency.batch32_questions_per_s),
             "not measured" if m.latency.batch32_padding is None
             else _pct(100 * m.latency.batch32_padding), f"{m.dev.f1:.1f}"]
            for r, m in inp.models.items()]
    return table(["Model", "Ours", "Parameters", "Latency, batch 1 (median)",
                  "Latency, batch 1 (95th pct.)", "Throughput, batch 32", "Padding, batch 32",
                  "dev F1 (single run)"], rows, "llrrrrrr")


def latency_questions(inp: Inputs) -> str:
    counts = {m.latency.questions for m in inp.models.values()} - {None}
    return "the same dev questions" if len(counts) != 1 else f"the same {counts.pop()} dev questions"


def runs_table(inp: Inputs) -> str:
    rows = [[_row_label(inp, r), m.mlflow_run_id] for r, m in inp.models.items()]
    rows.append(["Search (parent run of all trials)",
                 inp.metrics.search.parent_run_id or "not recorded"])
    return table(["Number", "MLflow run id"], rows)


def environment_table(inp: Inputs) -> str:
    env = inp.metrics.environment
    rows = [[label, env.get(key, "not recorded")] for key, label in (
        ("git_commit", "git commit"), ("git_dirty", "uncommitted changes (dirty)"),
        ("device", "device"))]
    skip = {"git_commit", "git_dirty", "device", "versions"}
    rows += [[k, env[k]] for k in sorted(env) if k not in skip and not isinstance(env[k], dict)]
    versions = env.get("versions") or {}
    rows += [[f"{k} version", versions[k]] for k in sorted(versions)]
    return table(["Item", "Value"], rows)


def curve_ends(inp: Inputs) -> list[str]:
    """Where each curve ends up: tune F1 half-way through training, at the end, and its peak,
    so a reader can tell a flattened curve from one still climbing."""
    lines = []
    for role, c in inp.curves.groupby("role", sort=True):
        c = c.sort_values("step")
        last, peak = c.iloc[-1], c.loc[c["tune_f1"].idxmax()]
        half = c.iloc[(c["step"] - last["step"] / 2).abs().argmin()]
        lines.append(f"{role}: {half['tune_f1']:.1f} half-way (step {int(half['step'])}), "
                     f"{last['tune_f1']:.1f} at the end (step {int(last['step'])}); "
                     f"highest {peak['tune_f1']:.1f} at step {int(peak['step'])}")
    return lines


# ---------------------------------------------------------------------------- rendering
def context(inp: Inputs) -> dict[str, Any]:
    m, search = inp.metrics, inp.metrics.search
    scores = dev_scores(inp)
    f1 = {role: s["f1"] for role, s in scores.items()}
    counts = (search.n_trials, search.n_complete, search.n_pruned, search.n_failed)
    states = inp.trials["state"].value_counts()
    params = m.distilled.params or search.best_params or {}
    imp = sorted((inp.importances or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "profile": m.profile, "data": str(m.data), "embedded": "embedded" in str(m.data).lower(),
        "t": m.teacher, "b": m.baseline, "d": m.distilled, "seeds": inp.seeds,
        "paper": PAPER, "paper_v1": PAPER_V1_DISTILLED, "paper_share": PAPER_GAP,
        "f1": f1, "gap": gap_recovered(f1["teacher"], f1["baseline"], f1["distilled"]),
        "search": search, "counts": counts, "other": counts[0] - sum(counts[1:]),
        "csv_counts": (len(inp.trials), *(int(states.get(s, 0))
                                          for s in ("COMPLETE", "PRUNED", "FAIL"))),
        "best_trial": m.best_trial,
        "method": inp.seeds.method if inp.seeds else None,
        "calibration": calibration_lines(inp) if inp.seeds else [],
        "gap_lines": gap_lines(inp),
        "results_table": results_table(inp, scores),
        "seeds_table": seeds_table(inp) if inp.seeds else None,
        "paired_table": paired_table(inp) if inp.seeds else None,
        "findings": findings(inp.seeds),
        "params_table": params and table(["Parameter", "Best value"],
                                         [[k, _g(params[k])] for k in sorted(params)]),
        "importances_missing": importances_missing(inp),
        "importances_table": inp.importances and table(
            ["Parameter", "Importance"], [[k, f"{v:.3f}"] for k, v in imp]),
        "trials_table": trials_table(inp), "cost_table": cost_table(inp),
        "latency_questions": latency_questions(inp),
        "curve_ends": curve_ends(inp),
        "runs_table": runs_table(inp), "environment_table": environment_table(inp),
    }


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("study.report", "templates"),
    autoescape=False,  # markdown, not HTML
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)
_ENV.filters.update(fmt=format, pct=_pct, millions=_millions)


def render_markdown(inp: Inputs) -> str:
    return _ENV.get_template("report.md.j2").render(context(inp))
