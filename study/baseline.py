"""Stage `baseline`: the task-agnostic student, fine-tuned with no teacher."""

from __future__ import annotations

from pathlib import Path

from study.config import Config
from study.files import staged_dir
from study.layout import Layout
from study.modeling import build_student
from study.tracking import RunHandle, Tracker
from study.fit import Checkpoints, Fitted, fit, load_splits, training_identity


def student_params(cfg: Config, seed: int) -> dict:
    s = cfg.student
    return {"student": s.init, "student.architecture": s.architecture,
            "student.layers": list(s.layers) if s.layers is not None else None,
            "seed": seed, "profile": cfg.profile,
            **{f"train.{k}": v for k, v in s.train.__dict__.items()}}


def fit_baseline(cfg: Config, out_dir: Path, seed: int, handle: RunHandle, start,
                 save: bool = True, callbacks=(), checkpoints: Checkpoints | None = None
                 ) -> Fitted:
    """Train one baseline student from `start` (build_student's model and tokenizer, made
    before the run opens: a bad init is refused with no run), logging to `handle`."""
    model, tokenizer = start
    return fit(cfg, role="baseline", model=model, tokenizer=tokenizer, spec=cfg.student.train,
               out_dir=out_dir, handle=handle, seed=seed, save=save, callbacks=callbacks,
               checkpoints=checkpoints)


def train_baseline(cfg: Config, out_dir: Path, seed: int, run_name: str, tags: dict | None = None,
                   save: bool = True, resume: bool = False, callbacks=()) -> Fitted:
    """`resume`: out_dir is a persistent scratch folder its caller owns (files.staged_dir
    with keep=True, files.scratch_dir): the training checkpoints there and, run again after
    a kill, resumes from its last checkpoint and continues its MLflow run (study.fit.fit)."""
    _, hashes = load_splits(cfg)
    start = build_student(cfg.student, seed)  # a bad init is refused before anything is written
    checkpoints = Checkpoints.prepare(out_dir, training_identity(
        cfg, role="baseline", seed=seed)) if resume else None
    tracker = Tracker(cfg)
    with tracker.run(run_name, "baseline", params=student_params(cfg, seed), tags=tags,
                     split_hashes=hashes,
                     record=checkpoints.run_record if checkpoints else None) as handle:
        handle.log_dict(cfg.to_dict(), "config.json")
        return fit_baseline(cfg, out_dir, seed, handle, start, save=save, callbacks=callbacks,
                            checkpoints=checkpoints)


def run(cfg: Config) -> dict:
    with staged_dir(Layout.of(cfg).baseline.root, keep=True) as out:
        doc = train_baseline(cfg, out, cfg.seed, "baseline", resume=True).doc
    print(f"baseline: tune F1 {doc['tune']['f1']:.2f}, dev EM/F1 "
          f"{doc['dev']['exact_match']:.2f}/{doc['dev']['f1']:.2f}")
    return doc
