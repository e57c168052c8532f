"""Stage `teacher`: fine-tune the teacher on `train` (or score a given fine-tuned checkpoint)."""

from __future__ import annotations

from pathlib import Path

import transformers

from study.config import Config
from study.errors import StudyError
from study.files import staged_dir
from study.modeling import load_qa_model, load_tokenizer
from study.tracking import Tracker
from study.fit import fit, load_splits


def output_dir(cfg: Config) -> Path:
    return cfg.artifacts / "teacher"


def trained_dir(cfg: Config) -> Path:
    """The folder of the teacher the `teacher` stage produced; refused if there is none."""
    folder = output_dir(cfg) / "model"
    if not folder.exists():
        raise StudyError(f"no trained teacher at {folder}: run `study teacher` first")
    return folder


def load_trained(cfg: Config):
    """(model, tokenizer, folder) of the teacher the `teacher` stage produced."""
    folder = trained_dir(cfg)
    return load_qa_model(str(folder), require_head=True), load_tokenizer(str(folder)), folder


def run(cfg: Config) -> dict:
    splits, hashes = load_splits(cfg)
    t = cfg.teacher
    ref = t.checkpoint or t.init
    transformers.set_seed(cfg.seed)
    model = load_qa_model(ref, require_head=bool(t.checkpoint))
    tokenizer = load_tokenizer(ref)
    tracker = Tracker(cfg)
    params = {"model": ref, "seed": cfg.seed, "profile": cfg.profile, "trained": not t.checkpoint,
              **{f"train.{k}": v for k, v in t.train.__dict__.items()}}
    with staged_dir(output_dir(cfg)) as out, \
            tracker.run("teacher", "teacher", params=params, split_hashes=hashes) as handle:
        handle.log_dict(cfg.to_dict(), "config.json")
        doc = fit(cfg, role="teacher", model=model, tokenizer=tokenizer, spec=t.train,
                  splits=splits, out_dir=out, handle=handle, train=not t.checkpoint)
    print(f"teacher: tune F1 {doc['tune']['f1']:.2f}, dev EM/F1 "
          f"{doc['dev']['exact_match']:.2f}/{doc['dev']['f1']:.2f}")
    return doc
