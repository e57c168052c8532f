"""Stage `seeds`: is the distillation gain real? Re-train the baseline and the best
distilled configuration with several seeds; mean and 95% CI of dev EM/F1 per model, and
a paired bootstrap 95% CI of the F1 difference (distilled - baseline) over dev questions.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import optuna

from study import dvc_metrics
from study import search as search_stage
from study.baseline import train_baseline
from study.config import Config
from study.distill import distill_student, setup_of
from study.errors import StudyError
from study.io import write_json
from study.metric import per_question
from study.training import load_splits

# Two-sided 97.5% quantiles of Student's t for n-1 degrees of freedom (n = 2..30).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045]


def mean_ci(values: list[float]) -> tuple[float, list[float]]:
    """Mean and the t-based 95% confidence interval of the mean."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, [m, m]
    t = _T975[min(len(x) - 2, len(_T975) - 1)]
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


def run(cfg: Config) -> dict:
    study = search_stage.load_study(cfg)
    try:
        best = study.best_trial
    except ValueError:
        raise StudyError("no complete trial to re-train: run `study search` first") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tcfg = search_stage.trial_config(cfg, dict(best.params))
    splits, _ = load_splits(cfg)
    refs = {r["id"]: list(r["answers"]["text"]) for r in splits["dev"]}
    qids = sorted(refs)
    runs: dict[str, list[dict]] = {"baseline": [], "distilled": []}
    per_q: dict[str, list[np.ndarray]] = {"baseline": [], "distilled": []}
    tags = {"seeds_of_trial": best.number}
    for seed in cfg.seeds.seeds:
        for role in ("baseline", "distilled"):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                if role == "baseline":
                    doc = train_baseline(cfg, out, seed, f"seed-{seed}-baseline", tags=tags, save=False)
                else:
                    doc = distill_student(tcfg, setup_of(tcfg), out, seed, f"seed-{seed}-distilled",
                                          role="seed-distilled", tags=tags, save=False)
                preds = json.loads((out / "predictions_dev.json").read_text())
            scores = per_question(preds, refs)
            runs[role].append(doc)
            per_q[role].append(np.array([scores[q][1] for q in qids]) * 100)
            print(f"seed {seed} {role}: dev EM/F1 {doc['dev']['exact_match']:.2f}/{doc['dev']['f1']:.2f}",
                  flush=True)
    result = {
        "seeds": list(cfg.seeds.seeds), "trial": best.number, "params": dict(best.params),
        "baseline": _summary(runs["baseline"]), "distilled": _summary(runs["distilled"]),
        # Per-question F1 averaged over seeds, then paired across models.
        "paired_bootstrap": paired_bootstrap(np.mean(per_q["baseline"], axis=0),
                                             np.mean(per_q["distilled"], axis=0),
                                             cfg.seeds.bootstrap_samples, seed=cfg.seed),
        "mlflow_run_ids": {role: [d["mlflow_run_id"] for d in docs] for role, docs in runs.items()},
    }
    write_json(cfg.reports / "seeds.json", result)
    dvc_metrics.write(cfg.reports, dvc_metrics.of_seeds(result))
    pb = result["paired_bootstrap"]
    print(f"F1 difference distilled - baseline: {pb['f1_diff']:.2f} "
          f"(95% CI {pb['ci95'][0]:.2f} .. {pb['ci95'][1]:.2f})")
    return result
