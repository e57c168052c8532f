"""Stage `seeds`: do the study's answers hold across seeds? Three arms re-trained with the
same seeds: the task-agnostic baseline (no teacher), the authors' setting and the searched
best (the arm `distilled`). Each training is scored per dev question, so every arm is a
seeds x questions matrix; every interval (each arm's mean, each paired difference, the gap
recovered) treats seeds and questions as random (study.intervals), and the paired ones use
the same seeds and the same questions in both arms.

Every training is recorded in artifacts/<profile>/seeds/runs.json as it finishes, and only the
trainings missing there are trained: after an interruption, for seeds added to `seeds.values`
(`study seeds --add N` adds them there, study.adding), and for an arm whose params changed
(an arm's trainings are kept while its params, the fixed settings, the questions and the
training code are the same: when the search's best changes, only the `distilled` arm is
trained again). Trainings run side by side (study.parallel) in `runtime.processes`
processes, each keyed by arm and seed, so the order they finish in reaches no number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna

from study import design, dvc_metrics, intervals, parallel
from study import search as search_stage
from study.baseline import train_baseline
from study.config import Config
from study.distill import distill_run, distill_student, prepare_caches
from study.errors import StudyError
from study.files import read_json, scratch_dir, write_json
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
# The modules a seed training runs: recorded trainings made by other code are not pooled.
TRAINING_CODE = (*design.SEARCH_CODE, "baseline.py", "seeds.py")


def arms(cfg: Config, best: optuna.trial.FrozenTrial) -> dict[str, dict | None]:
    """Arm -> distillation params (None: the task-agnostic baseline, no teacher)."""
    return {"baseline": None, "authors": design.authors_params(cfg), "distilled": dict(best.params)}


@dataclass(frozen=True)
class Training:
    """One (arm, seed) training, as a training process receives it (picklable)."""

    cfg: Config
    arm: str
    params: dict | None
    seed: int
    tags: dict
    qids: tuple[str, ...]


def train_arm(job: Training, callbacks=()) -> tuple[dict, dict]:
    """Train one arm with one seed; its metrics document and dev predictions. No evaluation
    during training: nothing here reads a learning curve or prunes. It checkpoints in its own
    scratch folder, so after a kill the next `study seeds` resumes it where it stopped, to
    the same numbers (study.fit.Checkpoints); the folder goes once the training is done."""
    cfg = parallel.trainee(job.cfg).replace(student={"train": {"evals_per_epoch": 0}})
    name = f"seed-{job.seed}-{job.arm}"
    with scratch_dir(Layout.of(cfg).seed_training(job.arm, job.seed).root) as out:
        if job.params is None:
            fitted = train_baseline(cfg, out, job.seed, name, tags=job.tags, save=False,
                                    resume=True, callbacks=callbacks)
        else:
            tcfg = search_stage.trial_config(cfg, job.params)
            role = f"seed-{job.arm}"
            with distill_run(tcfg, job.seed, name, role=role, tags=job.tags,
                             out_dir=out) as handle:
                fitted = distill_student(tcfg, out, job.seed, handle, role=role, save=False,
                                         callbacks=callbacks, resume=True)
    return fitted.doc, fitted.predictions["dev"]


def _train(job: Training) -> dict:
    """A training, here or in a training process: its record for runs.json."""
    doc, preds = train_arm(job, callbacks=[parallel.StopWhenAsked()])
    splits, _ = load_splits(job.cfg)
    return _record(doc, preds, references_of(splits["dev"]), list(job.qids))


# ------------------------------------------------------------------ the recorded trainings
def references_of(records: list[dict]) -> dict[str, list[str]]:
    return {r["id"]: list(r["answers"]["text"]) for r in records}


def _record(doc: dict, preds: dict, refs: dict, qids: list[str]) -> dict:
    scores = per_question(preds, refs)
    return {"exact_match": doc["dev"]["exact_match"], "f1": doc["dev"]["f1"],
            "mlflow_run_id": doc.get("mlflow_run_id"),
            "per_question_em": [scores[q][0] * 100 for q in qids],
            "per_question_f1": [scores[q][1] * 100 for q in qids]}


def _identity(cfg: Config, qids: list[str]) -> dict:
    """What every recorded training must share with new ones to be pooled: the fixed
    settings (a training's thread count among them), the questions and the training code.
    An arm's trainings also need the arm's params (`arms` in runs.json): when the search's
    best changes, only the `distilled` arm's are trained again."""
    return {"fixed_settings": design.fixed_settings(cfg), "questions": qids,
            "code": design.code_fingerprint(TRAINING_CODE)}


def load_runs(cfg: Config, settings: dict, identity: dict, required: bool
              ) -> dict[str, dict[str, dict]]:
    """The recorded trainings that pool with new ones (arm -> seed -> record): those of every
    arm whose params are still `settings`'. Made under other fixed settings, questions or
    code, they are refused when `required` (--add pools with them) and else left for new
    ones."""
    path = Layout.of(cfg).seed_runs
    if not path.exists() and not required:
        return {}
    doc = read_json(path, "recorded seed trainings", "run `study seeds` first (without --add)")
    differ = [k for k in identity if doc.get(k) != identity[k]]
    if differ and required:
        raise StudyError(f"{path} was recorded for another study ({', '.join(differ)} differ): "
                         f"run `study seeds` without --add to re-train every seed")
    if differ:
        print(f"{path} was recorded for another study ({', '.join(differ)} differ): "
              "training every seed", flush=True)
        return {}
    recorded = doc.get("arms") or {}
    kept = {arm: by_seed for arm, by_seed in doc["runs"].items()
            if arm in settings and arm in recorded and recorded[arm] == settings[arm]}
    for arm in sorted(set(doc["runs"]) - set(kept)):
        print(f"{path}: arm {arm} was trained with {recorded.get(arm)}, now {settings.get(arm)}: "
              f"its {len(doc['runs'][arm])} trainings are not pooled", flush=True)
    return kept


def train_seeds(cfg: Config, settings: dict, seeds: list[int], best_number: int,
                qids: list[str], runs: dict[str, dict[str, dict]], header: dict
                ) -> dict[str, dict[str, dict]]:
    """Every (arm, seed) of `seeds` missing from `runs`, trained side by side; each recorded
    in runs.json (under `header`: the trial, the arms' params, the identity) as it finishes,
    so an interruption loses only the trainings under way."""
    runs = {arm: dict(runs.get(arm, {})) for arm in settings}
    same = settings["distilled"] == settings["authors"]  # the search found the authors' setting
    trained = [a for a in settings if not (same and a == "distilled")]
    jobs = [Training(cfg, arm, settings[arm], seed, {"seeds_of_trial": best_number, "arm": arm},
                     tuple(qids))
            for seed in seeds for arm in trained if str(seed) not in runs[arm]]
    path = Layout.of(cfg).seed_runs
    if jobs:
        prepare_caches(cfg)  # made once, not by each training at once
    with parallel.SideBySide(min(cfg.runtime.processes, max(1, len(jobs))),
                             cfg.runtime.process_threads) as pool:
        for i, record in pool.completed(_train, jobs):
            job = jobs[i]
            runs[job.arm][str(job.seed)] = record
            write_json(path, {**header, "runs": runs})
            print(f"seed {job.seed} {job.arm}: dev EM/F1 {record['exact_match']:.2f}/"
                  f"{record['f1']:.2f}", flush=True)
    if same:
        runs["distilled"] = {str(s): runs["authors"][str(s)] for s in seeds}
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


def _best(cfg: Config) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    """The search's study and its best trial."""
    study = search_stage.load_study(cfg)
    try:
        return study, study.best_trial
    except ValueError:
        raise StudyError("no complete trial to re-train: run `study search` first") from None


def added(cfg: Config, add: int) -> tuple[int, ...]:
    """seeds.values with `add` more seeds (numbered on from its largest), for `study seeds
    --add N`; refused, before anything is written or trained, when there are no recorded
    trainings to pool them with (study.adding records them and runs the stage)."""
    if add < 1:
        raise StudyError(f"--add takes a number of seeds >= 1, got {add}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, best = _best(cfg)
    splits, _ = load_splits(cfg)
    load_runs(cfg, arms(cfg, best), _identity(cfg, sorted(references_of(splits["dev"]))),
              required=True)
    last = max(cfg.seeds.values)
    return (*cfg.seeds.values, *range(last + 1, last + 1 + add))


def run(cfg: Config) -> dict:
    """The stage: every seed of seeds.values, trained where runs.json lacks it."""
    study, best = _best(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    splits, _ = load_splits(cfg)
    refs = references_of(splits["dev"])
    qids = sorted(refs)
    settings = arms(cfg, best)
    identity = _identity(cfg, qids)
    header = {"study": study.study_name, "trial": best.number, "arms": settings, **identity}
    layout = Layout.of(cfg)
    recorded = load_runs(cfg, settings, identity, required=False)
    seeds = list(cfg.seeds.values)
    runs = train_seeds(cfg, settings, seeds, best.number, qids, recorded, header)
    write_json(layout.seed_runs, {**header, "runs": runs})
    # The intervals are over the seeds asked for (seeds.values), not whatever else runs.json
    # holds.
    used = {arm: {str(s): r[str(s)] for s in seeds} for arm, r in runs.items()}
    result = summarise(used, settings, best.number, best.params, _teacher_f1(cfg, refs, qids),
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
