"""Stage `teacher`: fine-tune the teacher on `train` (or score a given fine-tuned checkpoint)."""

from __future__ import annotations

from pathlib import Path

import transformers

from study.config import Config
from study.errors import StudyError
from study.files import staged_dir
from study.layout import Layout
from study.modeling import load_qa_model, load_tokenizer
from study.tracking import RunHandle, Tracker
from study.fit import Checkpoints, Fitted, fit, load_splits, training_identity


_LOADED: dict[tuple, tuple] = {}


def trained_folder(cfg: Config) -> Path:
    """The folder of the teacher the `teacher` stage produced."""
    folder = Layout.of(cfg).teacher.model
    if not folder.exists():
        raise StudyError(f"no trained teacher at {folder}: run `study teacher` first")
    return folder


def load_trained(cfg: Config):
    """(model, tokenizer, folder) of the trained teacher, loaded once per process while its
    files are unchanged: every trial of a search shares it (it is frozen, in eval mode)."""
    folder = trained_folder(cfg)
    memo = tuple((str(f), f.stat().st_mtime_ns) for f in sorted(folder.glob("*.safetensors")))
    if memo not in _LOADED:
        _LOADED.clear()  # one teacher in memory at a time
        _LOADED[memo] = (load_qa_model(str(folder), require_head=True), load_tokenizer(str(folder)))
    model, tokenizer = _LOADED[memo]
    return model, tokenizer, folder


def initial(cfg: Config):
    """(model, tokenizer) the teacher stage starts from: `teacher.init`, seeded, or the given
    fine-tuned `teacher.checkpoint`. Loaded before any run opens (a bad one is refused)."""
    t = cfg.teacher
    ref = t.checkpoint or t.init
    transformers.set_seed(cfg.seed)
    return load_qa_model(ref, require_head=bool(t.checkpoint)), load_tokenizer(ref)


def fit_teacher(cfg: Config, out_dir: Path, handle: RunHandle, start, save: bool = True,
                checkpoints: Checkpoints | None = None) -> Fitted:
    """Fine-tune the teacher from `start` (`initial`), or only score a given checkpoint,
    logging to the run `handle` its caller opened (resuming from `checkpoints`' last)."""
    model, tokenizer = start
    return fit(cfg, role="teacher", model=model, tokenizer=tokenizer, spec=cfg.teacher.train,
               out_dir=out_dir, handle=handle, train=not cfg.teacher.checkpoint, save=save,
               checkpoints=checkpoints)


def run(cfg: Config) -> dict:
    _, hashes = load_splits(cfg)
    t = cfg.teacher
    ref = t.checkpoint or t.init
    start = initial(cfg)
    tracker = Tracker(cfg)
    params = {"model": ref, "seed": cfg.seed, "profile": cfg.profile, "trained": not t.checkpoint,
              **{f"train.{k}": v for k, v in t.train.__dict__.items()}}
    # A killed or failed run left its checkpoints in the scratch folder: resumed there.
    with staged_dir(Layout.of(cfg).teacher.root, keep=True) as out:
        checkpoints = Checkpoints.prepare(
            out, training_identity(cfg, role="teacher", seed=cfg.seed))
        with tracker.run("teacher", "teacher", params=params, split_hashes=hashes,
                         record=checkpoints.run_record) as handle:
            handle.log_dict(cfg.to_dict(), "config.json")
            doc = fit_teacher(cfg, out, handle, start, checkpoints=checkpoints).doc
    print(f"teacher: tune F1 {doc['tune']['f1']:.2f}, dev EM/F1 "
          f"{doc['dev']['exact_match']:.2f}/{doc['dev']['f1']:.2f}")
    return doc
