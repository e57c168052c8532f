"""Stage `seeds`: do the study's answers hold across seeds? Three arms re-trained with the
same seeds: the task-agnostic baseline (no teacher), the authors' setting and the searched
best. Per arm, mean and t-based 95% CI of dev EM/F1; per question of the study (authors' KD
vs baseline, searched vs authors, searched vs baseline; the searched best is the arm
`distilled`), a paired bootstrap 95% CI of the F1
difference over the same dev questions.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import optuna
from scipy import stats

from study import design, dvc_metrics
from study import search as search_stage
from study.baseline import train_baseline
from study.config import Config
from study.distill import distill_run, distill_student
from study.errors import StudyError
from study.layout import Layout
from study.metric import per_question
from study.results import write_seeds
from study.fit import load_splits


def mean_ci(values: list[float]) -> tuple[float, list[float]]:
    """Mean and the t-based 95% confidence interval of the mean."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, [m, m]
    t = float(stats.t.ppf(0.975, df=len(x) - 1))
    half = t * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, [m - half, m + half]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int, seed: int = 0) -> dict:
    """95% percentile CI of mean(b - a) over questions resampled with replacement."""
    diff = np.asarray(b, float) - np.asarray(a, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(samples, len(diff)))
    means = diff[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"f1_diff": float(diff.mean()), "ci95": [float(lo), float(hi)], "samples": samples,
            "questions": len(diff)}


def _summary(docs: list[dict]) -> dict:
    out: dict = {"exact_match": [d["dev"]["exact_match"] for d in docs],
                 "f1": [d["dev"]["f1"] for d in docs], "mean": {}, "ci95": {}}
    for k in ("exact_match", "f1"):
        out["mean"][k], out["ci95"][k] = mean_ci(out[k])
    return out


# The three questions of the study, each a paired difference (b - a) over dev questions.
# The searched best is the arm `distilled`, as in reports/metrics.json.
COMPARISONS = {"authors_minus_baseline": ("baseline", "authors"),
               "distilled_minus_authors": ("authors", "distilled"),
               "distilled_minus_baseline": ("baseline", "distilled")}


def arms(cfg: Config, best: optuna.trial.FrozenTrial) -> dict[str, dict | None]:
    """Arm -> distillation params (None: the task-agnostic baseline, no teacher)."""
    return {"baseline": None, "authors": design.authors_params(cfg), "distilled": dict(best.params)}


def train_arm(cfg: Config, arm: str, params: dict | None, seed: int, tags: dict) -> tuple[dict, dict]:
    """Train one arm with one seed; its metrics document and dev predictions. No evaluation
    during training: nothing here reads a learning curve or prunes."""
    cfg = cfg.replace(student={"train": {"evals_per_epoch": 0}})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        name = f"seed-{seed}-{arm}"
        if params is None:
            fitted = train_baseline(cfg, out, seed, name, tags=tags, save=False)
        else:
            tcfg = search_stage.trial_config(cfg, params)
            role = f"seed-{arm}"
            with distill_run(tcfg, seed, name, role=role, tags=tags) as handle:
                fitted = distill_student(tcfg, out, seed, handle, role=role, save=False)
    return fitted.doc, fitted.predictions["dev"]


def run(cfg: Config) -> dict:
    study = search_stage.load_study(cfg)
    try:
        best = study.best_trial
    except ValueError:
        raise StudyError("no complete trial to re-train: run `study search` first") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    splits, _ = load_splits(cfg)
    refs = {r["id"]: list(r["answers"]["text"]) for r in splits["dev"]}
    qids = sorted(refs)
    settings = arms(cfg, best)
    docs: dict[str, list[dict]] = {arm: [] for arm in settings}
    per_q: dict[str, list[np.ndarray]] = {arm: [] for arm in settings}
    tags = {"seeds_of_trial": best.number}
    for seed in cfg.seeds.values:
        for arm, params in settings.items():
            if arm == "distilled" and params == settings["authors"]:
                # The search found the authors' setting: the same training, not run twice.
                doc, f1 = docs["authors"][-1], per_q["authors"][-1]
            else:
                doc, preds = train_arm(cfg, arm, params, seed, {**tags, "arm": arm})
                scores = per_question(preds, refs)
                f1 = np.array([scores[q][1] for q in qids]) * 100
            docs[arm].append(doc)
            per_q[arm].append(f1)
            print(f"seed {seed} {arm}: dev EM/F1 {doc['dev']['exact_match']:.2f}/"
                  f"{doc['dev']['f1']:.2f}", flush=True)
    # Per-question F1 averaged over seeds, then paired across arms on the same questions.
    mean_q = {arm: np.mean(rows, axis=0) for arm, rows in per_q.items()}
    paired = {name: paired_bootstrap(mean_q[a], mean_q[b], cfg.seeds.bootstrap_samples,
                                     seed=cfg.seed) for name, (a, b) in COMPARISONS.items()}
    result = {
        "seeds": list(cfg.seeds.values), "trial": best.number, "params": dict(best.params),
        "authors_params": settings["authors"],
        **{arm: _summary(d) for arm, d in docs.items()},
        "paired": paired,
        "mlflow_run_ids": {arm: [d["mlflow_run_id"] for d in ds] for arm, ds in docs.items()},
    }
    reports = Layout.of(cfg).reports
    write_seeds(reports.seeds, result)
    dvc_metrics.write(reports, dvc_metrics.of_seeds(result))
    for name, pb in paired.items():
        print(f"F1 difference {name.replace('_minus_', ' - ')}: {pb['f1_diff']:.2f} "
              f"(95% CI {pb['ci95'][0]:.2f} .. {pb['ci95'][1]:.2f})")
    return result
