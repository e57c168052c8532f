"""Stage `best`: take the best trial by `tune` F1, export and register its student, and
write the result files the report is built from (reports/metrics.json, curves.csv,
importances.json).

Latency is measured here, on this machine, for teacher, baseline and best student:
per dev question answered by the predictor (study.qa), batch 1 and batch 32.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import optuna

from study import dvc_metrics
from study import search as search_stage
from study.config import Config
from study.distill import distill_student
from study.errors import StudyError
from study.files import read_json, staged_dir, write_json
from study.layout import Layout, StageDir
from study.modeling import parameter_count
from study.qa import QASettings, QuestionAnswerer
from study.results import (
    CurveRow,
    StageMetrics,
    read_stage_metrics,
    write_curves,
    write_metrics,
)
from study.serving import register_champion
from study.tracking import RunHandle, Tracker, device_name, git_state, package_versions
from study.fit import apply_runtime, device, load_splits


def latency_ms(answerer: QuestionAnswerer, records: list[dict], questions: int = 48) -> dict:
    """Milliseconds per question answered by the predictor (windows, forward, n-best search),
    batch sizes 1 and 32 (CPU unless runtime says cuda)."""
    recs = records[:questions]
    out = {}
    for bs in (1, 32):
        answerer.answer_records(recs[:bs], batch_size=bs)  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(recs), bs):
            answerer.answer_records(recs[i:i + bs], batch_size=bs)
        out[f"batch{bs}"] = round(1000 * (time.perf_counter() - t0) / len(recs), 3)
    return out


def log_registered_model(handle: RunHandle, model_dir: Path, cfg: Config) -> str:
    """Log the student as an MLflow pyfunc model, register it, alias it `champion`."""
    name = cfg.tracking.registered_model.format(profile=cfg.profile)
    return register_champion(handle, model_dir, QASettings.from_config(cfg), name)


def _curve_rows(role: str, doc: StageMetrics) -> list[CurveRow]:
    return [CurveRow(role=role, **point.model_dump()) for point in doc.curve]


def _model_entry(doc: StageMetrics, model_name: str, latency: dict, params: int) -> dict:
    return {"model": model_name, "dev": doc.dev, "tune": doc.tune, "parameters": params,
            "mlflow_run_id": doc.mlflow_run_id, "latency_ms": latency}


def describe_data(cfg: Config, manifest: dict) -> str:
    s = manifest["splits"]
    counts = " / ".join(f"{n} {s[n]['questions']}" for n in ("train", "tune", "dev"))
    src = {"embedded": "embedded XQuAD-en (1,190 SQuAD v1.1 dev questions), split by article",
           "hub": f"the hub data set {cfg.data.hub_name!r} (dev = official validation)",
           "local": f"local SQuAD files {cfg.data.path}"}[cfg.data.source]
    return f"{src}: {counts} questions"


def run(cfg: Config) -> dict:
    apply_runtime(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = search_stage.load_study(cfg)
    try:
        best = study.best_trial
    except ValueError:
        raise StudyError(f"study {study.study_name!r} has no complete trial: run `study search` first") from None
    summary = search_stage.summarise(study)
    params = dict(best.params)
    tcfg = search_stage.trial_config(cfg, params)
    tracker = Tracker(cfg)
    parent = study.user_attrs.get(search_stage.PARENT_ATTR)
    layout = Layout.of(cfg)
    teacher_doc = read_stage_metrics(layout.teacher.metrics, "teacher")
    baseline_doc = read_stage_metrics(layout.baseline.metrics, "baseline")
    kept = layout.search.trial(best.number)
    splits, hashes = load_splits(cfg)
    run_params = {**params, "trial_number": best.number, "seed": cfg.seed,
                  "weights": "kept" if kept.model.exists() else "retrained"}
    with staged_dir(layout.best.root) as staging, \
            tracker.run(f"best-trial-{best.number}", "best", params=run_params,
                        tags={"study_name": study.study_name, "source_run_id":
                              best.user_attrs.get(search_stage.RUN_ATTR, "")},
                        parent_run_id=parent, split_hashes=hashes) as handle:
        out = StageDir(staging)
        if kept.model.exists() and kept.metrics.exists():
            for item in kept.root.iterdir():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / item.name)
            best_doc = read_stage_metrics(out.metrics, "search")
        else:  # weights not kept: re-train from the trial's params and seed (deterministic)
            best_doc = StageMetrics.model_validate(
                distill_student(tcfg, staging, cfg.seed, handle, role="best").doc)
        best_doc.mlflow_run_id = best.user_attrs.get(search_stage.RUN_ATTR)
        version = log_registered_model(handle, out.model, cfg)
        handle.set_tags({"registered_model_version": version})
        handle.log_metrics({"dev_f1": best_doc.dev.f1,
                            "dev_exact_match": best_doc.dev.exact_match,
                            "tune_f1": best_doc.tune.f1})

    models = {}
    dev = splits["dev"]
    for role, folder in (("teacher", layout.teacher.model), ("baseline", layout.baseline.model),
                         ("distilled", layout.best.model)):
        qa = QuestionAnswerer.from_pretrained(str(folder), QASettings.from_config(cfg),
                                              device=device(cfg),
                                              precision=cfg.runtime.mixed_precision)
        m = qa.model
        models[role] = (latency_ms(qa, dev), parameter_count(m), m.config.model_type,
                        getattr(m.config, "num_hidden_layers", getattr(m.config, "n_layers", "?")))
    names = {role: f"{cfg.teacher.init if role == 'teacher' else cfg.student.init} "
                   f"({mt}, {nl} layers)" for role, (_, _, mt, nl) in models.items()}
    if cfg.teacher.init == "embedded":
        names["teacher"] = f"MiniLM-L6-H384 fine-tuned ({models['teacher'][2]}, {models['teacher'][3]} layers)"
    manifest = read_json(layout.data.manifest, "split manifest", "run `study prepare` first")
    metrics = {
        "profile": cfg.profile, "data": describe_data(cfg, manifest),
        "teacher": _model_entry(teacher_doc, names["teacher"], *models["teacher"][:2]),
        "baseline": _model_entry(baseline_doc, names["baseline"], *models["baseline"][:2]),
        "distilled": {**_model_entry(best_doc, names["distilled"], *models["distilled"][:2]),
                      "trial": best.number, "params": params},
        "search": {**summary, "parent_run_id": parent},
        "best_run_id": handle.run_id, "registered_model": {
            "name": cfg.tracking.registered_model.format(profile=cfg.profile), "version": version},
        "environment": {**git_state(), "versions": package_versions(), "device": device_name()},
    }
    reports = layout.reports
    reports.root.mkdir(parents=True, exist_ok=True)
    metrics = write_metrics(reports.metrics, metrics).model_dump()
    dvc_metrics.write(reports, dvc_metrics.of_best(metrics))
    write_curves(reports.curves,
                 _curve_rows("baseline", baseline_doc) + _curve_rows("distilled", best_doc))
    # Always written (empty with fewer than two complete trials): a declared output.
    write_json(reports.importances, importance(study) or {})
    print(f"best trial {best.number} {params}: tune F1 {best.value:.2f}, dev EM/F1 "
          f"{best_doc.dev.exact_match:.2f}/{best_doc.dev.f1:.2f}; "
          f"exported to {layout.best.model}, registered as "
          f"{metrics['registered_model']['name']} v{version}")
    return metrics


def importance(study: optuna.Study) -> dict[str, float] | None:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return None
    try:
        values = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):
        return None
    return {k: round(float(v), 6) for k, v in sorted(values.items())}
