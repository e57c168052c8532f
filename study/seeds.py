"""Stage `seeds`: do the study's answers hold across seeds? Three arms re-trained with the
same seeds: the task-agnostic baseline (no teacher), the authors' setting and the searched
best (the arm `distilled`). Each training is scored per dev question, so every arm is a
seeds x questions matrix; every interval (each arm's mean, each paired difference, the gap
recovered) treats seeds and questions as random (study.intervals), and the paired ones use
the same seeds and the same questions in both arms.

`study seeds --add N` trains N more seeds and recomputes every interval over all of them,
without re-training the seeds already recorded (artifacts/<profile>/seeds/runs.json).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import optuna

from study import design, dvc_metrics, intervals
from study import search as search_stage
from study.baseline import train_baseline
from study.config import Config
from study.distill import distill_run, distill_student
from study.errors import StudyError
from study.files import read_json, write_json
from study.fit import load_splits
from study.layout import Layout
from study.metric import per_question
from study.results import write_seeds
from study.serving import record_seeds
from study.tracking import Tracker

# The three questions of the study, each a paired difference (b - a) over dev questions.
# The searched best is the arm `distilled`, as in reports/metrics.json.
COMPARISONS = {"authors_minus_baseline": ("baseline", "authors"),
               "distilled_minus_authors": ("authors", "distilled"),
               "distilled_minus_baseline": ("baseline", "distilled")}
CALIBRATION_STUDIES = 1000


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


# ------------------------------------------------------------------ the recorded trainings
def _record(doc: dict, preds: dict, refs: dict, qids: list[str]) -> dict:
    scores = per_question(preds, refs)
    return {"exact_match": doc["dev"]["exact_match"], "f1": doc["dev"]["f1"],
            "mlflow_run_id": doc.get("mlflow_run_id"),
            "per_question_em": [scores[q][0] * 100 for q in qids],
            "per_question_f1": [scores[q][1] * 100 for q in qids]}


def _identity(cfg: Config, best: optuna.trial.FrozenTrial, settings: dict, qids: list[str]) -> dict:
    """What recorded trainings must share to be pooled with new ones."""
    return {"trial": best.number, "arms": settings, "fixed_settings": design.fixed_settings(cfg),
            "questions": qids}


def load_runs(cfg: Config, identity: dict) -> dict[str, dict[str, dict]]:
    """The recorded trainings (arm -> seed -> record), refused if made under other settings."""
    path = Layout.of(cfg).seed_runs
    doc = read_json(path, "recorded seed trainings", "run `study seeds` first (without --add)")
    differ = [k for k in identity if doc.get(k) != identity[k]]
    if differ:
        raise StudyError(f"{path} was recorded for another study ({', '.join(differ)} differ): "
                         f"run `study seeds` without --add to re-train every seed")
    return doc["runs"]


def train_seeds(cfg: Config, settings: dict, seeds: list[int], best_number: int,
                refs: dict, qids: list[str]) -> dict[str, dict[str, dict]]:
    runs: dict[str, dict[str, dict]] = {arm: {} for arm in settings}
    tags = {"seeds_of_trial": best_number}
    for seed in seeds:
        for arm, params in settings.items():
            if arm == "distilled" and params == settings["authors"]:
                # The search found the authors' setting: the same training, not run twice.
                runs[arm][str(seed)] = runs["authors"][str(seed)]
            else:
                doc, preds = train_arm(cfg, arm, params, seed, {**tags, "arm": arm})
                runs[arm][str(seed)] = _record(doc, preds, refs, qids)
            r = runs[arm][str(seed)]
            print(f"seed {seed} {arm}: dev EM/F1 {r['exact_match']:.2f}/{r['f1']:.2f}", flush=True)
    return runs


# ------------------------------------------------------------------ intervals
def _matrix(runs: dict[str, dict], seeds: list[int], key: str) -> np.ndarray:
    return np.array([runs[str(s)][key] for s in seeds], dtype=float)


def _arm_summary(runs: dict[str, dict], seeds: list[int]) -> dict:
    out: dict = {"seeds": seeds, "exact_match": [runs[str(s)]["exact_match"] for s in seeds],
                 "f1": [runs[str(s)]["f1"] for s in seeds], "mean": {}, "ci95": {},
                 "half_width": {}}
    for k, col in (("exact_match", "per_question_em"), ("f1", "per_question_f1")):
        iv = intervals.crossed(_matrix(runs, seeds, col))
        out["mean"][k], out["ci95"][k], out["half_width"][k] = iv.estimate, list(iv.ci95), iv.half_width
    return out


def _paired(runs: dict, a: str, b: str, seeds: list[int], samples: int, seed: int) -> dict:
    ma, mb = (_matrix(runs[x], seeds, "per_question_f1") for x in (a, b))
    iv = intervals.paired(ma, mb)
    diff = mb - ma
    return {"f1_diff": iv.estimate, "ci95": list(iv.ci95), "half_width": iv.half_width,
            "se": iv.se, "df": iv.df, "seeds": seeds, "questions": iv.questions,
            "resampled": list(iv.resampled), "per_seed": diff.mean(axis=1).tolist(),
            "seed_t_ci95": list(intervals.seed_t(diff).ci95),
            "question_bootstrap_ci95": list(
                intervals.question_bootstrap(diff, samples=samples, seed=seed).ci95),
            "calibration": calibration(diff, seed)}


def calibration(diff: np.ndarray, seed: int) -> dict:
    """The interval checked by simulation at this comparison's own variance components:
    how often it excludes 0 with no true difference, and with one of twice the seed SD."""
    s, q = diff.shape
    ms_s, ms_q, ms_e = intervals.mean_squares(diff)
    sd = {"sd_seed": float(np.sqrt(max(ms_s - ms_e, 0.0) / q)),
          "sd_question": float(np.sqrt(max(ms_q - ms_e, 0.0) / s)),
          "sd_residual": float(np.sqrt(ms_e))}
    common = dict(studies=CALIBRATION_STUDIES, seeds=s, questions=q, rng_seed=seed, **sd)
    null = intervals.simulate("crossed_t", effect=0.0, **common)
    effect = 2 * max(sd["sd_seed"], 1e-9)
    alt = intervals.simulate("crossed_t", effect=effect, **common)
    return {**sd, "studies": CALIBRATION_STUDIES, "excludes_zero_with_no_difference":
            null["excludes_zero"], "coverage": null["coverage"],
            "effect_twice_seed_sd": effect, "excludes_zero_with_that_effect": alt["excludes_zero"]}


def _gap(runs: dict, arm: str, teacher_f1: np.ndarray, seeds: list[int]) -> dict | None:
    """Share of the teacher - baseline dev F1 gap the arm recovers. The teacher is one run:
    its per-question scores are held fixed (its own seed variance is not in this interval)."""
    base = _matrix(runs["baseline"], seeds, "per_question_f1")
    den = teacher_f1[None, :] - base
    if den.mean() <= 0:
        return None
    num = _matrix(runs[arm], seeds, "per_question_f1") - base
    iv = intervals.ratio(num * 100, den)
    return {"estimate": iv.estimate, "ci95": list(iv.ci95), "half_width": iv.half_width,
            "seeds": seeds, "questions": iv.questions, "resampled": list(iv.resampled),
            "teacher_f1": float(teacher_f1.mean())}


def _teacher_f1(cfg: Config, refs: dict, qids: list[str]) -> np.ndarray | None:
    path = Layout.of(cfg).teacher.predictions("dev")
    if not path.exists():
        return None
    scores = per_question(read_json(path, "teacher dev predictions", ""), refs)
    return np.array([scores[q][1] * 100 for q in qids])


def summarise(runs: dict, settings: dict, trial: int, params: dict,
              teacher_f1: np.ndarray | None, bootstrap_samples: int, seed: int) -> dict:
    """seeds.json from the recorded trainings (arm -> seed -> per-question scores)."""
    seeds = sorted(int(s) for s in runs["baseline"])
    gaps = {} if teacher_f1 is None else {
        arm: _gap(runs, arm, teacher_f1, seeds) for arm in ("authors", "distilled")}
    return {
        "seeds": seeds, "trial": trial, "params": dict(params),
        "authors_params": settings["authors"], "method": intervals.DESCRIPTION,
        **{arm: _arm_summary(r, seeds) for arm, r in runs.items()},
        "paired": {name: _paired(runs, a, b, seeds, bootstrap_samples, seed)
                   for name, (a, b) in COMPARISONS.items()},
        "gap_recovered": {arm: g for arm, g in gaps.items() if g is not None},
        "mlflow_run_ids": {arm: [r[str(s)]["mlflow_run_id"] for s in seeds]
                           for arm, r in runs.items()},
    }


def run(cfg: Config, add: int | None = None) -> dict:
    if add is not None and add < 1:
        raise StudyError(f"--add takes a number of seeds >= 1, got {add}")
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
    identity = _identity(cfg, best, settings, qids)
    layout = Layout.of(cfg)
    if add:
        runs = load_runs(cfg, identity)
        last = max([int(s) for s in runs["baseline"]] + list(cfg.seeds.values))
        new = list(range(last + 1, last + 1 + add))
        more = train_seeds(cfg, settings, new, best.number, refs, qids)
        runs = {arm: {**runs[arm], **more[arm]} for arm in settings}
    else:
        runs = train_seeds(cfg, settings, list(cfg.seeds.values), best.number, refs, qids)
    write_json(layout.seed_runs, {**identity, "runs": runs})
    result = summarise(runs, settings, best.number, best.params, _teacher_f1(cfg, refs, qids),
                       cfg.seeds.bootstrap_samples, cfg.seed)
    write_seeds(layout.reports.seeds, result)
    dvc_metrics.write(layout.reports, dvc_metrics.of_seeds(result))
    # `best` registered this trial's student before any seed was trained: its registry
    # entry gets the interval now.
    name = cfg.tracking.registered_model.format(profile=cfg.profile)
    version = record_seeds(Tracker(cfg).client, name, study.study_name, best.number,
                           result["distilled"])
    if version:
        print(f"registered model {name} v{version}: described with its dev F1 over seeds")
    for name, pb in result["paired"].items():
        print(f"F1 difference {name.replace('_minus_', ' - ')}: {pb['f1_diff']:.2f} "
              f"(95% CI {pb['ci95'][0]:.2f} .. {pb['ci95'][1]:.2f}, seeds "
              f"{', '.join(map(str, pb['seeds']))} and {pb['questions']} questions)")
    return result
