"""The fit-and-score path shared by every stage that trains (teacher, baseline, distill,
search trials, seeds): features, Trainer, evaluation on tune and dev, files, MLflow."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorWithPadding, TrainingArguments

from study.teacher_logits import build_or_load
from study.config import Config, DistillConfig, TrainSpec
from study.data import SPLITS, build_eval_features, build_train_features, read_split, references
from study.files import read_json, write_json
from study.metric import squad_metrics
from study.modeling import parameter_count, save_model
from study.postprocess import postprocess_predictions
from study.qa import QASettings, QuestionAnswerer
from study.results import write_stage_metrics
from study.tracking import MlflowLogCallback, RunHandle
from study.trainer import DistillationTrainer, QuestionAnsweringTrainer, eval_steps


def data_dir(cfg: Config) -> Path:
    return cfg.artifacts / "data"


def load_splits(cfg: Config) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """The prepared splits and their hashes (from the manifest `study prepare` wrote)."""
    d = data_dir(cfg)
    splits = {name: read_split(d, name) for name in SPLITS}
    manifest = read_json(d / "split.json", "split manifest", "run `study prepare` first")
    return splits, {k: v["sha256"] for k, v in manifest["splits"].items()}


def device(cfg: Config) -> str:
    if cfg.runtime.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.runtime.device


def apply_runtime(cfg: Config) -> None:
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)


def training_arguments(cfg: Config, spec: TrainSpec, out_dir: Path, n_features: int,
                       seed: int, has_eval: bool, distilling: bool) -> TrainingArguments:
    dev = device(cfg)
    mp = cfg.runtime.mixed_precision
    if mp == "auto":
        mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if dev == "cuda" else "no"
    every = eval_steps(n_features, spec.batch_size, spec.evals_per_epoch)
    steps_per_epoch = math.ceil(n_features / spec.batch_size)
    kwargs: dict[str, Any] = dict(
        output_dir=str(out_dir / "trainer"), seed=seed, data_seed=seed,
        learning_rate=spec.learning_rate, num_train_epochs=spec.epochs, max_steps=spec.max_steps,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=cfg.eval.batch_size, weight_decay=spec.weight_decay,
        warmup_steps=int(spec.warmup_ratio * steps_per_epoch * spec.epochs),
        lr_scheduler_type=spec.lr_scheduler,
        eval_strategy="steps" if (has_eval and spec.evals_per_epoch) else "no",
        eval_steps=every, logging_steps=max(1, min(every, steps_per_epoch // 4 or 1)),
        save_strategy="no", report_to="none", use_cpu=dev == "cpu",
        fp16=mp == "fp16", bf16=mp == "bf16", dataloader_num_workers=0,
        # The distillation trainer needs feature_index and token_type_ids for the teacher.
        remove_unused_columns=not distilling, disable_tqdm=False,
    )
    if spec.group_by_length:
        kwargs.update(group_by_length_args())
    return TrainingArguments(**kwargs)


def group_by_length_args() -> dict[str, Any]:
    """Length-grouped training batches; transformers >= 5.2 spells it train_sampling_strategy."""
    if "group_by_length" in inspect.signature(TrainingArguments.__init__).parameters:
        return {"group_by_length": True}
    return {"train_sampling_strategy": "group_by_length"}


def _post_process(cfg: Config):
    def run(examples, features, start_logits, end_logits):
        return postprocess_predictions(examples, features, start_logits, end_logits,
                                       n_best=cfg.eval.n_best,
                                       max_answer_length=cfg.eval.max_answer_length)
    return run


def fit(cfg: Config, *, role: str, model, tokenizer, spec: TrainSpec, splits: dict[str, list[dict]],
        out_dir: Path, handle: RunHandle | None, seed: int | None = None,
        distill: DistillConfig | None = None, teacher=None, teacher_dir: Path | None = None,
        callbacks: Sequence = (), train: bool = True, save: bool = True) -> dict[str, Any]:
    """Train (unless train=False), score tune and dev, write predictions/metrics/model into
    out_dir, and log them to `handle`. Returns the metrics document."""
    apply_runtime(cfg)
    seed = cfg.seed if seed is None else seed
    started = time.time()
    d = cfg.data
    train_feats = build_train_features(splits["train"], tokenizer, d.max_length, d.doc_stride)
    tune_feats = build_eval_features(splits["tune"], tokenizer, d.max_length, d.doc_stride)
    collator = DataCollatorWithPadding(tokenizer)
    args = training_arguments(cfg, spec, out_dir, len(train_feats), seed, has_eval=True,
                              distilling=distill is not None)
    common = dict(model=model, args=args, train_dataset=train_feats, eval_dataset=tune_feats,
                  eval_examples=splits["tune"], data_collator=collator,
                  post_process_function=_post_process(cfg), processing_class=tokenizer)
    cache_seconds = 0.0
    if distill is None:
        trainer = QuestionAnsweringTrainer(**common)
    else:
        logits = None
        if distill.alpha_ce > 0 and distill.teacher_logits == "cache":
            t0 = time.time()
            logits = build_or_load(teacher, teacher_dir, tokenizer, train_feats, collator,
                                   root=cfg.artifacts / "teacher_cache", max_length=d.max_length,
                                   doc_stride=d.doc_stride, batch_size=cfg.eval.batch_size,
                                   device=args.device, dtype=distill.cache_dtype)
            cache_seconds = time.time() - t0
        trainer = DistillationTrainer(
            **common, teacher=teacher if (logits is None and distill.alpha_ce > 0) else None,
            teacher_logits=logits, temperature=distill.temperature, alpha_ce=distill.alpha_ce,
            alpha_squad=distill.alpha_squad)
    if handle is not None:
        trainer.add_callback(MlflowLogCallback(handle, trainer))
    for cb in callbacks:
        trainer.add_callback(cb)

    train_seconds = 0.0
    if train:
        t0 = time.time()
        trainer.train()
        train_seconds = time.time() - t0
    # Final scores come from the predictor users get (study predict, the served model).
    answerer = QuestionAnswerer(trainer.model, tokenizer, QASettings.from_config(cfg))
    scores: dict[str, dict[str, float]] = {}
    for name in ("tune", "dev"):
        texts = {qid: span.text for qid, span in answerer.answer_records(splits[name]).items()}
        scores[name] = squad_metrics(texts, references(splits[name]))
        write_json(out_dir / f"predictions_{name}.json", texts)
    curve = [{"step": e["step"], "tune_exact_match": e["eval_exact_match"], "tune_f1": e["eval_f1"]}
             for e in trainer.state.log_history if "eval_f1" in e]
    losses = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
    doc = {
        "role": role, "profile": cfg.profile, "seed": seed,
        "tune": scores["tune"], "dev": scores["dev"], "curve": curve, "train_loss": losses,
        "train_windows": len(train_feats), "steps": trainer.state.global_step,
        "parameters": parameter_count(model), "train_seconds": round(train_seconds, 2),
        "teacher_cache_seconds": round(cache_seconds, 2),
        "wall_seconds": round(time.time() - started, 2),
        "distill": distill.model_dump() if distill else None,
        "mlflow_run_id": handle.run_id if handle else None,
    }
    if save:
        save_model(trainer.model, tokenizer, out_dir / "model")
    write_stage_metrics(out_dir / "metrics.json", doc)
    if handle is not None:
        final = {f"{split}_{k}": v for split, m in scores.items() for k, v in m.items()}
        final.update(train_seconds=train_seconds, parameters=doc["parameters"])
        handle.log_metrics(final, step=trainer.state.global_step)
        for name in ("metrics.json", "predictions_tune.json", "predictions_dev.json"):
            handle.log_artifact(out_dir / name)
    return doc
