"""`study bench`: what the teacher-logit cache buys. Same student init, data and steps:
(a) plain fine-tuning, (b) distillation with the live teacher, (c) distillation with the
cache. Times go to the top level of reports/bench.json; target (c)/(a) <= 1.05."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import transformers

from study import teacher as teacher_stage
from study.bench.common import write_section
from study.config import Config
from study.data import build_train_features
from study.fit import apply_runtime, load_splits, train_columns, training_arguments
from study.modeling import build_student
from study.teacher_logits import build_or_load
from study.trainer import DistillationTrainer, QuestionAnsweringTrainer
from study.windows import PadToLongest, padded_rows


def run(cfg: Config, steps: int | None = None) -> dict:
    apply_runtime(cfg)
    steps = steps or 30
    splits, _ = load_splits(cfg)
    teacher, _, teacher_dir = teacher_stage.load_trained(cfg)
    _, tokenizer = build_student(cfg.student, cfg.seed)
    feats = build_train_features(splits["train"], tokenizer, cfg.data.max_length, cfg.data.doc_stride)
    spec = cfg.student.train.replace(max_steps=steps, evals_per_epoch=0)
    d = cfg.distill
    results: dict[str, float] = {}
    trained: dict[str, int] = {}  # what each variant trained: the times compare like with like
    with tempfile.TemporaryDirectory() as tmp:
        cache_root = Path(tmp) / "cache"
        t0 = time.perf_counter()
        args0 = training_arguments(cfg, spec, Path(tmp), len(feats), cfg.seed, False, True)
        cache = build_or_load(teacher, teacher_dir, tokenizer, feats, root=cache_root,
                              max_length=cfg.data.max_length, doc_stride=cfg.data.doc_stride,
                              batch_size=cfg.eval.batch_size, device=args0.device,
                              dtype=d.cache_dtype)
        results["cache_build_seconds"] = time.perf_counter() - t0
        variants = {
            "plain": dict(cls=QuestionAnsweringTrainer, kw={}),
            "live_teacher": dict(cls=DistillationTrainer, kw=dict(teacher=teacher)),
            "cached_teacher": dict(cls=DistillationTrainer, kw=dict(teacher_logits=cache)),
        }
        for name, v in variants.items():
            model, _ = build_student(cfg.student, cfg.seed)
            distilling = v["cls"] is DistillationTrainer
            args = training_arguments(cfg, spec, Path(tmp) / name, len(feats), cfg.seed,
                                      has_eval=False, distilling=distilling)
            extra = dict(temperature=d.temperature, alpha_ce=d.alpha_ce,
                         alpha_squad=d.alpha_squad, **v["kw"]) if distilling else {}
            columns = train_columns(feats, model, distilling)
            trainer = v["cls"](model=model, args=args,
                               train_dataset=padded_rows(feats, tokenizer, columns),
                               data_collator=PadToLongest(tokenizer), processing_class=tokenizer,
                               **extra)
            transformers.set_seed(cfg.seed)
            t0 = time.perf_counter()
            trainer.train()
            results[f"{name}_seconds"] = time.perf_counter() - t0
            trained[name] = trainer.state.global_step
    doc = {
        "steps": steps, "batch_size": spec.batch_size, "profile": cfg.profile,
        "student": f"{cfg.student.init} layers {list(cfg.student.layers or [])}",
        "max_length": cfg.data.max_length, "cache_dtype": d.cache_dtype,
        **{k: round(v, 3) for k, v in results.items()}, "steps_trained": trained,
        "ratio_live_over_plain": round(results["live_teacher_seconds"] / results["plain_seconds"], 4),
        "ratio_cached_over_plain": round(results["cached_teacher_seconds"] / results["plain_seconds"], 4),
        "target_cached_over_plain": 1.05,
    }
    doc = write_section(cfg, None, doc)
    print(f"plain {doc['plain_seconds']}s, live teacher {doc['live_teacher_seconds']}s "
          f"(x{doc['ratio_live_over_plain']}), cached {doc['cached_teacher_seconds']}s "
          f"(x{doc['ratio_cached_over_plain']}); cache built in {doc['cache_build_seconds']}s")
    return doc

