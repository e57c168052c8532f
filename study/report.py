"""`study report`: reports/report.md, reports/figures/*.png and reports/plots/history.csv.

Reads only the files the other stages exported into the reports folder, never MLflow or
Optuna, so it runs in seconds and anyone with the folder can regenerate it:

    study report                    # default profile: reports/
    study report --profile smoke    # the folder named by runtime.reports for that profile

Inputs (in the reports folder):
    metrics.json      required, from `study best`: teacher, baseline, distilled, search, environment
    trials.csv        required, from `study best`: one row per Optuna trial
    curves.csv        required, from `study best`: tune-set scores during training
    seeds.json        optional, from `study seeds`: mean and 95% CI over seeds, paired bootstrap
    importances.json  optional, from `study best`: Optuna's parameter importances

Everything written is deterministic: the same inputs give byte-identical files (Agg canvas,
fixed sizes and dpi, no PNG "Software" stamp, sorted iteration, no timestamps).
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from study.errors import StudyError
from study.io import read_json

HINT_BEST = "run `study best` first"
HINT_SEEDS = "run `study seeds` first"

# Sanh et al. (2019), Table 2 (SQuAD v1.1 dev, EM / F1) and Table 3 (parameters).
PAPER = {
    "teacher": ("BERT-base", 110, 81.2, 88.5),
    "baseline": ("DistilBERT", 66, 77.7, 85.8),
    "distilled": ("DistilBERT (D)", 66, 79.1, 86.9),
}
PAPER_V1_DISTILLED = (70.4, 79.8)  # DistilBERT (D) in the paper's first version
ROLES = ("teacher", "baseline", "distilled")
LABELS = {"teacher": "Teacher", "baseline": "Baseline", "distilled": "Distilled"}
ROW_LABELS = {
    "teacher": "Teacher",
    "baseline": "Baseline (task-agnostic, no teacher)",
    "distilled": "Distilled (best trial)",
}
ROLE_COLORS = {"teacher": "#1f77b4", "baseline": "#ff7f0e", "distilled": "#2ca02c"}
STATE_STYLE = {  # marker, face colour, edge colour, legend label
    "COMPLETE": ("o", "#2ca02c", "#2ca02c", "complete"),  # marker, face, edge, legend
    "PRUNED": ("v", "none", "#7f7f7f", "pruned (last reported score)"),
    "FAIL": ("x", "#d62728", "#d62728", "failed (no score)"),
    "RUNNING": ("s", "none", "#9467bd", "running"),
}
OTHER_STATE = ("D", "none", "#8c564b", "other state")
TRIAL_COLUMNS = (
    "number",
    "state",
    "temperature",
    "alpha_ce",
    "alpha_squad",
    "learning_rate",
    "tune_f1",
    "tune_exact_match",
    "dev_f1",
    "dev_exact_match",
    "duration_s",
    "mlflow_run_id",
)
TRIAL_REQUIRED = ("number", "state", "temperature", "alpha_ce", "alpha_squad", "tune_f1")
CURVE_REQUIRED = ("role", "step", "tune_f1")
SEARCHED = ("temperature", "alpha_ce", "alpha_squad", "learning_rate")
DPI = 110
PNG_METADATA = {"Software": None}


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ModelResult:
    role: str
    name: str
    dev_em: float
    dev_f1: float
    tune_em: float
    tune_f1: float
    parameters: int
    run_id: str
    latency_b1: float | None
    latency_b32: float | None


@dataclass(frozen=True)
class SeedResult:
    em: list[float]
    f1: list[float]
    em_mean: float
    f1_mean: float
    em_ci: tuple[float, float]
    f1_ci: tuple[float, float]


@dataclass(frozen=True)
class Seeds:
    seeds: list[int]
    models: dict[str, SeedResult]  # baseline, distilled
    f1_diff: float
    diff_ci: tuple[float, float]
    samples: int | None
    questions: int | None


@dataclass(frozen=True)
class Inputs:
    metrics: dict[str, Any]
    models: dict[str, ModelResult]
    trials: pd.DataFrame
    curves: pd.DataFrame
    seeds: Seeds | None
    importances: dict[str, float] | None


def _get(obj: Any, dotted: str, path: Path, kind: type | None = float, stage: str = "best") -> Any:
    node = obj
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node or node[part] is None:
            raise StudyError(f"{path.name} at {path} has no `{dotted}`: re-run `study {stage}`")
        node = node[part]
    if kind is None:
        return node
    try:
        return kind(node)
    except (TypeError, ValueError):
        raise StudyError(
            f"{path.name} at {path}: `{dotted}` must be a number (got {node!r})"
        ) from None


def _opt_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _model(metrics: dict, role: str, path: Path) -> ModelResult:
    lat = (metrics.get(role) or {}).get("latency_ms") or {}
    return ModelResult(
        role=role,
        name=str(_get(metrics, f"{role}.model", path, str)),
        dev_em=_get(metrics, f"{role}.dev.exact_match", path),
        dev_f1=_get(metrics, f"{role}.dev.f1", path),
        tune_em=_get(metrics, f"{role}.tune.exact_match", path),
        tune_f1=_get(metrics, f"{role}.tune.f1", path),
        parameters=int(_get(metrics, f"{role}.parameters", path)),
        run_id=str(_get(metrics, f"{role}.mlflow_run_id", path, str)),
        latency_b1=_opt_float(lat.get("batch1")),
        latency_b32=_opt_float(lat.get("batch32")),
    )


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise StudyError(f"{path.name} not found at {path}: {HINT_BEST}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise StudyError(f"{path.name} at {path} is empty: {HINT_BEST}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StudyError(f"{path.name} at {path} is not valid CSV ({first})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise StudyError(f"{path.name} at {path} lacks column(s) {', '.join(missing)}: {HINT_BEST}")
    return frame


def _numeric(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    text = frame[column].str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        raise StudyError(
            f"{path.name} at {path}: column {column} has a non-number {text[bad].iloc[0]!r}"
        )
    return values.astype(float)


def _trials(path: Path) -> pd.DataFrame:
    raw = _read_csv(path, TRIAL_REQUIRED)
    out = pd.DataFrame(index=raw.index)
    for column in TRIAL_COLUMNS:
        if column in ("state", "mlflow_run_id"):
            out[column] = raw[column].str.strip() if column in raw else ""
        elif column in raw:
            out[column] = _numeric(raw, column, path)
        else:
            out[column] = float("nan")
    if out["number"].isna().any():
        raise StudyError(f"{path.name} at {path}: every trial needs a number")
    out["number"] = out["number"].astype(int)
    out["state"] = out["state"].str.upper()
    return out.sort_values("number", kind="stable").reset_index(drop=True)


def _curves(path: Path) -> pd.DataFrame:
    raw = _read_csv(path, CURVE_REQUIRED)
    out = pd.DataFrame({"role": raw["role"].str.strip().str.lower()})
    for column in ("step", "tune_exact_match", "tune_f1"):
        out[column] = _numeric(raw, column, path) if column in raw else float("nan")
    return out.sort_values(["role", "step"], kind="stable").reset_index(drop=True)


def _ci(value: Any, where: str, path: Path) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise StudyError(f"{path.name} at {path}: `{where}` must be [low, high]")
    try:
        return float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise StudyError(f"{path.name} at {path}: `{where}` must hold numbers") from None


def _seeds(path: Path) -> Seeds | None:
    if not path.exists():
        return None
    raw = read_json(path, "seeds.json", HINT_SEEDS)

    def get(dotted: str, kind: type | None = float) -> Any:
        return _get(raw, dotted, path, kind, "seeds")

    models = {}
    for role in ("baseline", "distilled"):
        models[role] = SeedResult(
            em=[float(v) for v in get(f"{role}.exact_match", list)],
            f1=[float(v) for v in get(f"{role}.f1", list)],
            em_mean=get(f"{role}.mean.exact_match"),
            f1_mean=get(f"{role}.mean.f1"),
            em_ci=_ci(get(f"{role}.ci95.exact_match", None), f"{role}.ci95.exact_match", path),
            f1_ci=_ci(get(f"{role}.ci95.f1", None), f"{role}.ci95.f1", path),
        )
    boot = raw.get("paired_bootstrap") or {}
    return Seeds(
        seeds=[int(s) for s in get("seeds", list)],
        models=models,
        f1_diff=get("paired_bootstrap.f1_diff"),
        diff_ci=_ci(get("paired_bootstrap.ci95", None), "paired_bootstrap.ci95", path),
        samples=int(boot["samples"]) if boot.get("samples") is not None else None,
        questions=int(boot["questions"]) if boot.get("questions") is not None else None,
    )


def _importances(path: Path) -> dict[str, float] | None:
    if not path.exists():
        return None
    raw = read_json(path, "importances.json", HINT_BEST)
    if not isinstance(raw, dict):
        raise StudyError(f"importances.json at {path} must map parameter names to numbers")
    out = {str(k): _opt_float(v) for k, v in raw.items()}
    bad = sorted(k for k, v in out.items() if v is None)
    if bad:
        raise StudyError(f"importances.json at {path}: `{bad[0]}` must be a number")
    return dict(sorted(out.items()))


def load_inputs(reports_dir: Path) -> Inputs:
    reports_dir = Path(reports_dir)
    path = reports_dir / "metrics.json"
    metrics = read_json(path, "metrics.json", HINT_BEST)
    if not isinstance(metrics, dict):
        raise StudyError(f"metrics.json at {path} must hold an object: {HINT_BEST}")
    models = {role: _model(metrics, role, path) for role in ROLES}
    for key in ("n_trials", "n_complete", "n_pruned", "n_failed"):
        _get(metrics, f"search.{key}", path, int)
    return Inputs(
        metrics=metrics,
        models=models,
        trials=_trials(reports_dir / "trials.csv"),
        curves=_curves(reports_dir / "curves.csv"),
        seeds=_seeds(reports_dir / "seeds.json"),
        importances=_importances(reports_dir / "importances.json"),
    )


# ---------------------------------------------------------------------------- numbers


def dev_scores(inp: Inputs) -> dict[str, dict[str, Any]]:
    """The table's dev EM/F1 per role: the seed mean with its CI where seeds.json has one,
    else the single run from metrics.json."""
    out = {}
    for role, m in inp.models.items():
        s = inp.seeds.models.get(role) if inp.seeds else None
        if s is None:
            out[role] = {"em": m.dev_em, "f1": m.dev_f1, "em_ci": None, "f1_ci": None}
        else:
            out[role] = {"em": s.em_mean, "f1": s.f1_mean, "em_ci": s.em_ci, "f1_ci": s.f1_ci}
    return out


def gap_recovered(teacher: float, baseline: float, distilled: float) -> float | None:
    """Share (%) of the teacher-baseline gap that the distilled student closes."""
    gap = teacher - baseline
    if abs(gap) < 1e-12:
        return None
    return 100.0 * (distilled - baseline) / gap


PAPER_GAP = gap_recovered(PAPER["teacher"][3], PAPER["baseline"][3], PAPER["distilled"][3])


def best_so_far(trials: pd.DataFrame) -> pd.Series:
    """Running maximum of tune F1 over COMPLETE trials, in trial order (NaN before the first)."""
    scores = trials["tune_f1"].where(trials["state"] == "COMPLETE")
    return scores.cummax().ffill()


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


def _table(header: list[str], rows: list[list[Any]], align: str = "") -> list[str]:
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}%"


# ---------------------------------------------------------------------------- markdown


def render_markdown(inp: Inputs) -> str:
    m, models, search = inp.metrics, inp.models, inp.metrics.get("search") or {}
    scores = dev_scores(inp)
    t, b, d = (models[r] for r in ROLES)
    distilled = m.get("distilled") or {}
    trial_no = distilled.get("trial")
    profile = m.get("profile", "unknown")
    data = str(m.get("data", "not recorded"))
    L: list[str] = []

    L += [
        (
            f"# Task-specific distillation for SQuAD v1.1 question answering: results "
            f"(profile `{profile}`)"
        ),
        "",
        (
            "_Generated by `study report` from the files exported into this folder "
            "(metrics.json, trials.csv, curves.csv and, where present, seeds.json and "
            "importances.json). Do not edit by hand: run `study report` again._"
        ),
        "",
    ]

    # What the numbers are.
    L += [
        "## What these numbers come from",
        "",
        f"- **Data:** {data}.",
        (
            f"- **Teacher:** {t.name}, {_millions(t.parameters)} parameters, fine-tuned on the "
            f"train split."
        ),
        (
            f"- **Student:** {b.name}, {_millions(b.parameters)} parameters. The baseline is "
            f"fine-tuned with the gold spans only; the distilled student also learns from the "
            f"teacher's start/end logits (DistilBERT's task-specific distillation, "
            f"Sanh et al., 2019)."
        ),
        (
            "- **Selection:** the search picks the best trial by F1 on the `tune` split; `dev` "
            "is held out and used only for the numbers below."
        ),
        "",
    ]
    if "embedded" in data.lower():
        L += [
            (
                "This is a **small-scale reproduction**, not the paper's setting. The paper "
                "fine-tunes BERT-base (110M parameters) and DistilBERT (66M) on the 87,599 "
                "SQuAD v1.1 training questions and scores on its 10,570 dev questions; here "
                "small models train on a few hundred questions. Compare the *shape* of the "
                "result (does distillation close part of the teacher–student gap?), not the "
                "absolute scores."
            ),
            "",
        ]
    else:
        L += [
            (
                "The paper fine-tunes BERT-base (110M parameters) and DistilBERT (66M) on the "
                "87,599 SQuAD v1.1 training questions and scores on its 10,570 dev questions. "
                "Check the data and models above against that setting before comparing "
                "absolute scores."
            ),
            "",
        ]

    # Table 2.
    seeded = inp.seeds is not None
    L += ["## Dev results in the layout of the paper's Table 2", ""]
    header = ["Model", "Ours", "dev EM", "dev F1", "Parameters", "Paper (SQuAD v1.1 dev EM / F1)"]
    if seeded:
        header[2:4] = ["dev EM (± 95% CI)", "dev F1 (± 95% CI)"]
    rows = []
    for role in ROLES:
        label = ROW_LABELS[role]
        if role == "distilled" and trial_no is not None:
            label = f"Distilled (best trial, #{trial_no})"
        s = scores[role]
        pname, pparams, pem, pf1 = PAPER[role]
        rows.append(
            [
                f"**{label}**",
                models[role].name,
                _with_ci(s["em"], s["em_ci"]),
                _with_ci(s["f1"], s["f1_ci"]),
                _millions(models[role].parameters),
                f"{pname} ({pparams}M): {pem} / {pf1}",
            ]
        )
    L += _table(header, rows, "llrrrl") + [""]
    if seeded:
        L += [
            (
                f"Baseline and distilled: mean over seeds {', '.join(map(str, inp.seeds.seeds))} "
                "with the 95% CI of that mean (`± half-width`, or `[low, high]` where the CI is "
                "not symmetric); the teacher is a single run. The single runs from the search "
                f"scored {b.dev_em:.1f} / {b.dev_f1:.1f} (baseline) and {d.dev_em:.1f} / "
                f"{d.dev_f1:.1f} (distilled) EM / F1."
            ),
            "",
        ]
    else:
        L += [
            ("Single runs (seed from params.yaml); `study seeds` adds the 95% CI over seeds."),
            "",
        ]
    L += [
        (
            f"The paper's first version reported {PAPER_V1_DISTILLED[0]} EM / "
            f"{PAPER_V1_DISTILLED[1]} F1 for DistilBERT (D); the final version's "
            f"{PAPER['distilled'][2]} / {PAPER['distilled'][3]} is in the table."
        ),
        "",
    ]

    tf, bf, df = scores["teacher"]["f1"], scores["baseline"]["f1"], scores["distilled"]["f1"]
    rec = gap_recovered(tf, bf, df)
    paper = (
        f"the paper: ({PAPER['distilled'][3]} − {PAPER['baseline'][3]}) / "
        f"({PAPER['teacher'][3]} − {PAPER['baseline'][3]}) = {_pct(PAPER_GAP)}"
    )
    if rec is None:
        L += [
            (
                f"**Gap recovered:** undefined here: teacher and baseline have the same dev F1 "
                f"({tf:.1f}); {paper}."
            ),
            "",
        ]
    else:
        L += [
            (
                f"**Gap recovered:** distillation recovers {_pct(rec)} of the teacher–baseline "
                f"dev F1 gap: ({df:.1f} − {bf:.1f}) / ({tf:.1f} − {bf:.1f}); {paper}."
            )
        ]
        if tf < bf:
            L += [
                (
                    "Note: the teacher scores *below* the baseline here, so this share has no "
                    "meaningful reading."
                )
            ]
        elif rec < 0:
            L += ["A negative share means the distilled student scores below the baseline."]
        L += [""]
    L += [
        (
            "![Dev EM and F1 of teacher, baseline and distilled student, with the paper's "
            "values](figures/scores.png)"
        ),
        "",
    ]

    # Seeds.
    L += ["## Seeds", ""]
    if inp.seeds is None:
        L += [
            (
                "Not run: seeds.json is absent (`study seeds` re-trains the baseline and the "
                "best distilled configuration with several seeds and writes it)."
            ),
            "",
        ]
    else:
        sd = inp.seeds
        rows = []
        for role in ("baseline", "distilled"):
            r = sd.models[role]
            rows.append(
                [
                    LABELS[role],
                    f"{r.em_mean:.1f} [{r.em_ci[0]:.1f}, {r.em_ci[1]:.1f}]",
                    f"{r.f1_mean:.1f} [{r.f1_ci[0]:.1f}, {r.f1_ci[1]:.1f}]",
                    ", ".join(f"{v:.1f}" for v in r.f1),
                ]
            )
        L += [f"Seeds: {', '.join(map(str, sd.seeds))}.", ""]
        L += _table(
            ["Model", "dev EM mean [95% CI]", "dev F1 mean [95% CI]", "dev F1 per seed"], rows
        ) + [""]
        lo, hi = sd.diff_ci
        detail = []
        if sd.samples is not None:
            detail.append(f"{sd.samples} paired bootstrap samples")
        if sd.questions is not None:
            detail.append(f"over the same {sd.questions} dev questions")
        L += [
            f"**Distilled − baseline dev F1:** {sd.f1_diff:+.1f} points, 95% CI "
            f"[{lo:+.1f}, {hi:+.1f}]" + (f" ({', '.join(detail)})" if detail else "") + "."
        ]
        if lo > 0:
            L += ["The CI excludes 0: the gain from distillation is distinguishable from zero."]
        elif hi < 0:
            L += [
                (
                    "The CI excludes 0 on the negative side: the distilled student is "
                    "distinguishably *worse* than the baseline."
                )
            ]
        else:
            L += ["The CI includes 0: the difference is not distinguishable from zero."]
        L += [""]

    # Search.
    n, nc, npr, nf = (int(search[k]) for k in ("n_trials", "n_complete", "n_pruned", "n_failed"))
    other = n - nc - npr - nf
    L += [
        "## Hyperparameter search",
        "",
        f"Optuna study `{search.get('study_name', 'unknown')}`: **{n} trials: {nc} complete, "
        f"{npr} pruned, {nf} failed**"
        + (f", {other} other (running)" if other > 0 else "")
        + ". Objective: tune F1 (maximised).",
    ]
    counts = inp.trials["state"].value_counts()
    csv_counts = (
        len(inp.trials),
        int(counts.get("COMPLETE", 0)),
        int(counts.get("PRUNED", 0)),
        int(counts.get("FAIL", 0)),
    )
    if csv_counts != (n, nc, npr, nf):
        L += [
            (
                f"(trials.csv lists {csv_counts[0]} trials: {csv_counts[1]} complete, "
                f"{csv_counts[2]} pruned, {csv_counts[3]} failed; it was exported at a different "
                "time than metrics.json.)"
            )
        ]
    best_f1 = search.get("best_tune_f1")
    L += [
        "",
        f"Best trial: #{search.get('best_trial', trial_no)}"
        + (f", tune F1 {float(best_f1):.1f}" if best_f1 is not None else "")
        + f", dev F1 {d.dev_f1:.1f}, dev EM {d.dev_em:.1f}.",
        "",
    ]
    params = distilled.get("params") or search.get("best_params") or {}
    if params:
        L += _table(["Parameter", "Best value"], [[k, _g(params[k])] for k in sorted(params)])
        L += [""]
    L += [
        "![Tune F1 per trial with the best so far](figures/history.png)",
        "",
        "![Tune F1 against each searched parameter](figures/params.png)",
        "",
    ]
    if inp.importances is None:
        L += ["Parameter importances: not run (importances.json is absent).", ""]
    else:
        imp = sorted(inp.importances.items(), key=lambda kv: (-kv[1], kv[0]))
        L += _table(["Parameter", "Importance"], [[k, f"{v:.3f}"] for k, v in imp]) + [""]
    L += ["![Parameter importances](figures/importances.png)", ""]
    L += ["All trials (per-trial dev scores are in trials.csv; selection uses tune only):", ""]
    lr = inp.trials["learning_rate"].notna().any()
    header = (
        ["Trial", "State", "T", "α_ce", "α_squad"]
        + (["Learning rate"] if lr else [])
        + ["Tune EM", "Tune F1", "Duration", "MLflow run"]
    )
    rows = []
    best_no = search.get("best_trial", trial_no)
    for row in inp.trials.itertuples(index=False):
        num = f"**{row.number}** (best)" if row.number == best_no else str(row.number)
        cells = [num, row.state or "?", _g(row.temperature), _g(row.alpha_ce), _g(row.alpha_squad)]
        if lr:
            cells.append("–" if math.isnan(row.learning_rate) else f"{row.learning_rate:.2e}")
        dur = "–" if math.isnan(row.duration_s) else f"{row.duration_s:.0f} s"
        cells += [_f(row.tune_exact_match), _f(row.tune_f1), dur, row.mlflow_run_id or "–"]
        rows.append([c if c != "nan" else "–" for c in cells])
    L += _table(header, rows, "llrrr" + ("r" if lr else "") + "rrrl") + [""]

    # Curves.
    L += [
        "## Learning curves",
        "",
        (
            "F1 on the `tune` split during training, baseline against the distilled student "
            "(best configuration)."
        ),
        "",
        "![Tune F1 against training step](figures/curves.png)",
        "",
    ]

    # Cost.
    L += [
        "## Accuracy against cost",
        "",
        (
            "Latency is measured inference time per question (milliseconds), at batch size 1 "
            "and 32, on the device listed under Environment."
        ),
        "",
    ]
    rows = [
        [
            LABELS[r],
            models[r].name,
            _millions(models[r].parameters),
            _ms(models[r].latency_b1),
            _ms(models[r].latency_b32),
            f"{models[r].dev_f1:.1f}",
        ]
        for r in ROLES
    ]
    L += _table(
        [
            "Model",
            "Ours",
            "Parameters",
            "Latency, batch 1",
            "Latency, batch 32",
            "dev F1 (single run)",
        ],
        rows,
        "llrrrr",
    ) + [""]
    L += ["![Dev F1 against latency and parameter count](figures/tradeoff.png)", ""]

    # MLflow.
    L += ["## MLflow runs behind each number", ""]
    rows = [[ROW_LABELS[r], models[r].run_id] for r in ROLES]
    if trial_no is not None:
        rows[2][0] = f"Distilled (best trial, #{trial_no})"
    rows.append(
        ["Search (parent run of all trials)", search.get("parent_run_id") or "not recorded"]
    )
    L += _table(["Number", "MLflow run id"], rows) + [""]
    L += ["Each trial's run id is in the trial table above; `study ui` opens the MLflow UI.", ""]

    # Environment.
    env = m.get("environment") or {}
    L += ["## Environment", ""]
    rows = [
        ["git commit", env.get("git_commit", "not recorded")],
        ["uncommitted changes (dirty)", env.get("git_dirty", "not recorded")],
        ["device", env.get("device", "not recorded")],
    ]
    skip = {"git_commit", "git_dirty", "device", "versions"}
    rows += [[k, env[k]] for k in sorted(env) if k not in skip and not isinstance(env[k], dict)]
    versions = env.get("versions") or {}
    rows += [[f"{k} version", versions[k]] for k in sorted(versions)]
    L += _table(["Item", "Value"], rows) + [""]

    L += [
        "## Files",
        "",
        "- `figures/*.png`: the figures above.",
        (
            "- `plots/history.csv` (trial, tune_f1, best_so_far, state) and `curves.csv`: data "
            "for `dvc plots show`."
        ),
        "",
    ]
    return "\n".join(L)


# ---------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)
    tmp.replace(path)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def _wrap(text: str, width: int = 30) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def fig_scores(inp: Inputs) -> Figure:
    scores = dev_scores(inp)
    fig = _figure(8.0, 5.2)
    ax = fig.add_subplot()
    width = 0.38
    colors = {"em": "#9ecae1", "f1": "#3182bd"}
    for i, role in enumerate(ROLES):
        s = scores[role]
        for j, (key, paper_value) in enumerate((("em", PAPER[role][2]), ("f1", PAPER[role][3]))):
            x = i + (j - 0.5) * width
            value, ci = s[key], s[f"{key}_ci"]
            yerr = None if ci is None else [[max(value - ci[0], 0)], [max(ci[1] - value, 0)]]
            ax.bar(
                x,
                value,
                width * 0.95,
                color=colors[key],
                yerr=yerr,
                capsize=4,
                error_kw={"elinewidth": 1.2, "ecolor": "black"},
            )
            ax.text(
                x,
                value / 2,
                f"{value:.1f}",
                ha="center",
                va="center",
                fontsize=9,
                color="black" if key == "em" else "white",
                fontweight="bold",
            )
            ax.hlines(
                paper_value,
                x - width / 2,
                x + width / 2,
                colors="black",
                linestyles="--",
                linewidth=1.5,
            )
            ax.text(
                x, paper_value + 1.0, f"paper {paper_value}", ha="center", va="bottom", fontsize=8
            )
    ax.set_xticks(range(len(ROLES)))
    ax.set_xticklabels(
        [f"{LABELS[r]}\n{_wrap(inp.models[r].name)}\npaper: {PAPER[r][0]}" for r in ROLES],
        fontsize=9,
    )
    ax.set_ylim(0, 100)
    ax.set_ylabel("SQuAD v1.1 score on dev (%)")
    seeded = inp.seeds is not None
    ax.set_title(
        "Dev exact match and F1 against the paper's counterparts"
        + (
            "\n(baseline and distilled: mean over seeds, 95% CI bars)"
            if seeded
            else "\n(single runs)"
        ),
        fontsize=11,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles = [
        Patch(color=colors["em"], label="exact match (EM)"),
        Patch(color=colors["f1"], label="F1"),
        Line2D([], [], color="black", linestyle="--", label="paper's value, same metric"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9)
    return fig


def _state_style(state: str) -> tuple[str, str, str, str]:
    return STATE_STYLE.get(state, OTHER_STATE)


def _score_range(values: list[float]) -> tuple[float, float, float]:
    """(low, high, row for trials without a score) on a tune-F1 axis."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 100.0)
    pad = max((hi - lo) * 0.1, 1.0)
    return lo - pad, hi + pad, lo - 2 * pad


def _score_axis(ax, low: float, high: float, no_score: float, with_row: bool) -> None:
    """Tune-F1 y axis; with_row adds a bottom row, ticked `no score`, for unscored trials."""
    if not with_row:
        ax.set_ylim(low, high)
        return
    ax.set_ylim(no_score - (high - low) * 0.06, high)
    ticks = [
        t
        for t in MaxNLocator(nbins=6, steps=[1, 2, 5, 10]).tick_values(low, high)
        if low <= t <= high
    ]
    ax.yaxis.set_major_locator(FixedLocator([no_score, *ticks]))
    ax.yaxis.set_major_formatter(
        FuncFormatter(lambda v, _: "no score" if abs(v - no_score) < 1e-9 else f"{v:g}")
    )
    ax.axhline((no_score + low) / 2, color="#999999", linewidth=0.8, linestyle=":")


def _plot_trials(ax, trials: pd.DataFrame, xcol: str, no_score_y: float, best_no: Any) -> set:
    """Scatter trials by state; trials without a tune F1 go on the `no score` row."""
    seen = set()
    for state in sorted(trials["state"].unique()):
        sub = trials[trials["state"] == state]
        sub = sub[sub[xcol].notna()]
        if sub.empty:
            continue
        marker, face, edge, _ = _state_style(state)
        y = sub["tune_f1"].fillna(no_score_y)
        kwargs = {"c": face} if marker == "x" else {"facecolors": face, "edgecolors": edge}
        ax.scatter(sub[xcol], y, marker=marker, s=42, linewidths=1.3, zorder=3, **kwargs)
        seen.add(state)
    best = trials[(trials["number"] == best_no) & trials["tune_f1"].notna() & trials[xcol].notna()]
    if not best.empty:
        ax.scatter(
            best[xcol],
            best["tune_f1"],
            marker="*",
            s=260,
            facecolors="gold",
            edgecolors="black",
            linewidths=0.8,
            zorder=4,
        )
    return seen


def _state_handles(states: set) -> list:
    out = []
    for state in [*STATE_STYLE, *sorted(states - set(STATE_STYLE))]:
        if state not in states:
            continue
        marker, face, edge, label = _state_style(state)
        color = face if marker == "x" else edge
        out.append(
            Line2D(
                [],
                [],
                linestyle="",
                marker=marker,
                markersize=7,
                color=color,
                markerfacecolor=face if face != "none" else "none",
                markeredgecolor=color,
                label=label,
            )
        )
    return out


def _best_handle() -> Line2D:
    return Line2D(
        [],
        [],
        linestyle="",
        marker="*",
        markersize=14,
        markerfacecolor="gold",
        markeredgecolor="black",
        label="best trial",
    )


def _no_data(ax, message: str) -> None:
    ax.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        fontsize=11,
        color="#555555",
        transform=ax.transAxes,
        wrap=True,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def fig_history(inp: Inputs) -> Figure:
    trials = inp.trials
    best_no = (inp.metrics.get("search") or {}).get("best_trial")
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    ax.set_title("Search history: tune F1 per trial", fontsize=11)
    ax.set_xlabel("trial number")
    ax.set_ylabel("F1 on tune (%)")
    if trials.empty:
        _no_data(ax, "no trials in trials.csv")
        return fig
    t, b = inp.models["teacher"].tune_f1, inp.models["baseline"].tune_f1
    lo, hi, no_score = _score_range([*trials["tune_f1"].tolist(), t, b])
    _score_axis(ax, lo, hi, no_score, trials["tune_f1"].isna().any())
    states = _plot_trials(ax, trials, "number", no_score, best_no)
    handles = _state_handles(states)
    best = best_so_far(trials)
    if best.notna().any():
        ax.step(trials["number"], best, where="post", color="#2ca02c", linewidth=1.6, zorder=2)
        handles.append(Line2D([], [], color="#2ca02c", linewidth=1.6, label="best so far"))
    if best_no is not None and (trials["number"] == best_no).any():
        handles.append(_best_handle())
    for role, value, style in (("teacher", t, "--"), ("baseline", b, ":")):
        ax.axhline(value, color=ROLE_COLORS[role], linestyle=style, linewidth=1.4)
        handles.append(
            Line2D(
                [],
                [],
                color=ROLE_COLORS[role],
                linestyle=style,
                linewidth=1.4,
                label=f"{role} tune F1 ({value:.1f})",
            )
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8.5)
    return fig


def _searched(trials: pd.DataFrame) -> list[str]:
    out = ["temperature", "alpha_ce", "alpha_squad"]
    if trials["learning_rate"].notna().any():
        out.append("learning_rate")
    return out


AXIS_LABELS = {
    "temperature": "temperature T (log scale)",
    "alpha_ce": "α_ce (weight of the distillation KL term)",
    "alpha_squad": "α_squad (weight of the gold-span CE term)",
    "learning_rate": "learning rate (log scale)",
}


def fig_params(inp: Inputs) -> Figure:
    trials = inp.trials
    names = _searched(trials)
    best_no = (inp.metrics.get("search") or {}).get("best_trial")
    fig = _figure(4.0 * len(names), 4.4)
    axes = fig.subplots(1, len(names), sharey=True)
    fig.suptitle("Tune F1 against each searched parameter (one point per trial)", fontsize=11)
    lo, hi, no_score = _score_range(trials["tune_f1"].tolist())
    states: set = set()
    for ax, name in zip(axes, names):
        ax.set_xlabel(AXIS_LABELS[name], fontsize=9)
        ax.grid(alpha=0.3)
        if trials.empty:
            _no_data(ax, "no trials")
            continue
        _score_axis(ax, lo, hi, no_score, trials["tune_f1"].isna().any())
        states |= _plot_trials(ax, trials, name, no_score, best_no)
        if name.startswith("alpha_"):
            ax.set_xlim(-0.04, 1.04)  # the weights' whole allowed range
        elif (trials[name] > 0).any():
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].set_ylabel("F1 on tune (%)")
    handles = _state_handles(states)
    if best_no is not None and (trials["number"] == best_no).any():
        handles.append(_best_handle())
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8.5)
    return fig


def fig_importances(inp: Inputs) -> Figure:
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    ax.set_title("Parameter importance for tune F1 (Optuna)", fontsize=11)
    if not inp.importances:
        _no_data(
            ax,
            "not available: importances.json is absent\n"
            "(Optuna needs enough complete trials to estimate importances)",
        )
        return fig
    items = sorted(inp.importances.items(), key=lambda kv: (kv[1], kv[0]))  # largest on top
    y = range(len(items))
    ax.barh(list(y), [v for _, v in items], color="#3182bd", height=0.6)
    ax.set_yticks(list(y))
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
    fig = _figure(8.0, 4.6)
    ax = fig.add_subplot()
    ax.set_title("Learning curves: tune F1 during training", fontsize=11)
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel("F1 on tune (%)")
    handles = []
    for role, marker in (("baseline", "o"), ("distilled", "s")):
        sub = inp.curves[(inp.curves["role"] == role) & inp.curves["tune_f1"].notna()]
        if sub.empty:
            continue
        (line,) = ax.plot(
            sub["step"],
            sub["tune_f1"],
            marker=marker,
            markersize=5,
            color=ROLE_COLORS[role],
            linewidth=1.6,
            label=f"{role} (final {sub['tune_f1'].iloc[-1]:.1f})",
        )
        handles.append(line)
    t = inp.models["teacher"].tune_f1
    handles.append(
        ax.axhline(
            t,
            color=ROLE_COLORS["teacher"],
            linestyle="--",
            linewidth=1.4,
            label=f"teacher, end of training ({t:.1f})",
        )
    )
    if len(handles) == 1:
        ax.text(
            0.5,
            0.5,
            "no baseline or distilled rows in curves.csv",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#555555",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    return fig


def _label_offsets(models: list[ModelResult], key) -> dict[str, tuple[int, int]]:
    """Label above the higher-F1 point and below the lower one where two share an x."""
    order = sorted(models, key=lambda m: (m.dev_f1, m.role))
    out = {}
    for m in models:
        twins = [
            o
            for o in order
            if o is not m
            and key(o) is not None
            and key(m) is not None
            and abs(key(o) - key(m)) <= 0.15 * max(abs(key(m)), 1e-9)
        ]
        if not twins:
            out[m.role] = (8, -3)
        else:
            higher = all(m.dev_f1 >= o.dev_f1 for o in twins)
            out[m.role] = (8, 7) if higher else (8, -14)
    return out


def fig_tradeoff(inp: Inputs) -> Figure:
    models = [inp.models[r] for r in ROLES]
    fig = _figure(11.0, 4.8)
    ax_lat, ax_par = fig.subplots(1, 2, sharey=True)
    fig.suptitle("Accuracy against cost: dev F1 (single run) vs latency and size", fontsize=11)
    f1s = [m.dev_f1 for m in models]
    span = max(max(f1s) - min(f1s), 2.0)
    ylim = (min(f1s) - 0.45 * span, max(f1s) + 0.45 * span)

    # Latency: each model is a segment from its batch-32 to its batch-1 latency.
    lat = [v for m in models for v in (m.latency_b1, m.latency_b32) if v is not None]
    if lat:
        offsets = _label_offsets(models, lambda m: m.latency_b1 or m.latency_b32)
        for m in models:
            pts = [
                (v, mk) for v, mk in ((m.latency_b1, "o"), (m.latency_b32, "s")) if v is not None
            ]
            if not pts:
                continue
            if len(pts) == 2:
                ax_lat.plot(
                    [p[0] for p in pts],
                    [m.dev_f1] * 2,
                    color=ROLE_COLORS[m.role],
                    linewidth=1,
                    alpha=0.5,
                )
            for v, mk in pts:
                ax_lat.scatter(
                    [v], [m.dev_f1], marker=mk, s=60, color=ROLE_COLORS[m.role], zorder=3
                )
            x = max(p[0] for p in pts)
            ax_lat.annotate(
                f"{LABELS[m.role]} ({m.dev_f1:.1f})",
                (x, m.dev_f1),
                xytext=offsets[m.role],
                textcoords="offset points",
                fontsize=9,
                color=ROLE_COLORS[m.role],
            )
        ax_lat.set_xlim(0, max(lat) * 1.45)
        fig.legend(
            handles=[
                Line2D([], [], linestyle="", marker="o", color="#555555", label="batch size 1"),
                Line2D([], [], linestyle="", marker="s", color="#555555", label="batch size 32"),
                Line2D(
                    [],
                    [],
                    color="#555555",
                    linewidth=1,
                    alpha=0.5,
                    label="same model (latency per question falls with batching)",
                ),
            ],
            loc="outside lower center",
            ncol=3,
            fontsize=8.5,
        )
    else:
        _no_data(ax_lat, "latency not measured")
    ax_lat.set_xlabel("inference latency per question (ms)")
    ax_lat.set_ylabel("F1 on dev (%)")
    ax_lat.set_title("F1 against latency", fontsize=10)
    ax_lat.grid(alpha=0.3)

    offsets = _label_offsets(models, lambda m: m.parameters)
    for m in models:
        x = m.parameters / 1e6
        ax_par.scatter([x], [m.dev_f1], s=60, color=ROLE_COLORS[m.role], zorder=3)
        ax_par.annotate(
            f"{LABELS[m.role]} ({m.dev_f1:.1f})",
            (x, m.dev_f1),
            xytext=offsets[m.role],
            textcoords="offset points",
            fontsize=9,
            color=ROLE_COLORS[m.role],
        )
    ax_par.set_xlim(0, max(m.parameters for m in models) / 1e6 * 1.45)
    ax_par.set_xlabel("parameters (millions)")
    ax_par.set_title("F1 against model size", fontsize=10)
    ax_par.grid(alpha=0.3)
    ax_lat.set_ylim(*ylim)
    return fig


FIGURES = {
    "scores": fig_scores,
    "history": fig_history,
    "params": fig_params,
    "importances": fig_importances,
    "curves": fig_curves,
    "tradeoff": fig_tradeoff,
}


# ---------------------------------------------------------------------------- outputs


def history_frame(trials: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": trials["number"],
            "tune_f1": trials["tune_f1"],
            "best_so_far": best_so_far(trials),
            "state": trials["state"],
        }
    )


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(path)


def build_report(reports_dir: Path) -> list[Path]:
    """Write report.md, figures/*.png and plots/history.csv into `reports_dir`."""
    reports_dir = Path(reports_dir)
    inp = load_inputs(reports_dir)
    figures, plots = reports_dir / "figures", reports_dir / "plots"
    try:
        figures.mkdir(parents=True, exist_ok=True)
        plots.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"cannot write to {reports_dir}: {exc.strerror}") from None
    written = []
    for name in sorted(FIGURES):
        path = figures / f"{name}.png"
        _save(FIGURES[name](inp), path)
        written.append(path)
    history = plots / "history.csv"
    _write_text(history, history_frame(inp.trials).to_csv(index=False, lineterminator="\n"))
    written.append(history)
    report = reports_dir / "report.md"
    _write_text(report, render_markdown(inp))
    written.append(report)
    return written


def run(cfg) -> dict:
    paths = build_report(cfg.reports)
    for path in paths:
        print(f"wrote {path}")
    return {"written": [str(p) for p in paths]}
