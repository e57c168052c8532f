"""Stage `best`: take the best trial by `tune` F1, export and register its student, and
write the result files the report is built from (reports/metrics.json, curves.csv,
importances.json).

Inference cost is measured here, on this machine, for teacher, baseline and best student,
on the same dev questions answered by the predictor (study.qa): latency one question at a
time (batch 1, median and 95th percentile) and throughput in batches of 32.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import optuna

from study import dvc_metrics, parallel
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
from study.serving import ModelCard, model_card, register_champion, version_card
from study.tracking import RunHandle, Tracker, device_name, git_state, package_versions
from study.fit import apply_runtime, device, load_splits


LATENCY_QUESTIONS = 64  # two full batches of 32
BATCH = 32


def padding_share(batches: list[list[int]], batch_size: int) -> float:
    """The share of the tokens computed that are padding: `batches` holds the window lengths
    of each call, whose windows run `batch_size` at a time, each forward pass padded to its
    longest window (study.windows.pad_batch, as study.qa does)."""
    real = computed = 0
    for lengths in batches:
        real += sum(lengths)
        computed += sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                        for i in range(0, len(lengths), batch_size))
    return 1 - real / computed if computed else 0.0


def latency(answerer: QuestionAnswerer, records: list[dict],
            questions: int = LATENCY_QUESTIONS) -> dict:
    """On the same first `questions` records: each answered alone (batch 1: median and 95th
    percentile, ms) and in batches of 32 (questions per second), with the padding share at
    batch 32 (results.Latencies). CPU unless runtime says cuda."""
    recs = records[:questions]
    answerer.answer_records(recs[:1], batch_size=1)  # warm-up
    alone = []
    for r in recs:
        t0 = time.perf_counter()
        answerer.answer_records([r], batch_size=1)
        alone.append(1000 * (time.perf_counter() - t0))
    chunks = [recs[i:i + BATCH] for i in range(0, len(recs), BATCH)]
    answerer.answer_records(chunks[0], batch_size=BATCH)  # warm-up
    t0 = time.perf_counter()
    for chunk in chunks:
        answerer.answer_records(chunk, batch_size=BATCH)
    batched_s = time.perf_counter() - t0
    lengths = [[len(ids) for ids in answerer.windows(chunk)["input_ids"]] for chunk in chunks]
    return {"questions": len(recs),
            "batch1_median_ms": round(float(np.median(alone)), 3),
            "batch1_p95_ms": round(float(np.percentile(alone, 95)), 3),
            "batch32_questions_per_s": round(len(recs) / batched_s, 3),
            "batch32_padding": round(padding_share(lengths, BATCH), 4)}


def log_registered_model(handle: RunHandle, model_dir: Path, cfg: Config,
                         card: ModelCard | None = None) -> str:
    """Log the student as an MLflow pyfunc model, register it (described by `card`), alias
    it `champion`."""
    name = cfg.tracking.registered_model.format(profile=cfg.profile)
    model = model_card(cfg.profile, cfg.experiment_name, str(Layout.of(cfg).reports.report))
    return register_champion(handle, model_dir, QASettings.from_config(cfg), name, card, model)


def _curve_rows(role: str, doc: StageMetrics) -> list[CurveRow]:
    return [CurveRow(role=role, **point.model_dump()) for point in doc.curve]


def _model_entry(doc: StageMetrics, model_name: str, cost: dict, params: int) -> dict:
    return {"model": model_name, "dev": doc.dev, "tune": doc.tune, "parameters": params,
            "mlflow_run_id": doc.mlflow_run_id, "latency": cost}


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
    tcfg = parallel.trainee(search_stage.trial_config(cfg, params))  # as the trial trained
    tracker = Tracker(cfg)
    parent = study.user_attrs.get(search_stage.PARENT_ATTR)
    layout = Layout.of(cfg)
    teacher_doc = read_stage_metrics(layout.teacher.metrics, "teacher")
    baseline_doc = read_stage_metrics(layout.baseline.metrics, "baseline")
    kept = layout.search.trial(best.number)
    splits, hashes = load_splits(cfg)
    run_params = {**params, "trial_number": best.number, "seed": cfg.seed,
                  "weights": "kept" if kept.model.exists() else "retrained"}
    # A run of its own, not one more child of the study's parent run: it is a copy of one
    # trial (or its re-training), which the study's runs already hold. Tags link both.
    with staged_dir(layout.best.root) as staging, \
            tracker.run(f"best-trial-{best.number}", "best", params=run_params,
                        tags={"study_name": study.study_name, "study_run_id": parent or "",
                              "source_run_id": best.user_attrs.get(search_stage.RUN_ATTR, "")},
                        split_hashes=hashes) as handle:
        out = StageDir(staging)
        if kept.model.exists() and kept.metrics.exists():
            for item in kept.root.iterdir():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / item.name)
            best_doc = read_stage_metrics(out.metrics, "search")
        else:  # weights not kept: re-train from the trial's params and seed (deterministic)
            best_doc = StageMetrics.model_validate(
                distill_student(tcfg, staging, cfg.seed, handle, role="best").doc)
        best_doc.mlflow_run_id = best.user_attrs.get(search_stage.RUN_ATTR)
        card = version_card(
            study_name=study.study_name, trial=best.number, params=params,
            dev=best_doc.dev.model_dump(), tune_f1=best_doc.tune.f1, seed=cfg.seed,
            run_id=handle.run_id, trial_run_id=best_doc.mlflow_run_id,
            report=str(layout.reports.report), profile=cfg.profile,
            git_commit=git_state()["git_commit"])
        version = log_registered_model(handle, out.model, cfg, card)
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
        models[role] = (latency(qa, dev), parameter_count(m), m.config.model_type,
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
