"""Stage `distill`: the same student init, fine-tuned with the teacher (DistilBERT's loss)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from study import teacher as teacher_stage
from study.baseline import student_params
from study.config import Config
from study.data import check_same_tokenization
from study.files import staged_dir
from study.layout import Layout
from study.modeling import build_student
from study.tracking import RunHandle, Tracker
from study.fit import Checkpoints, Fitted, fit, load_splits, training_identity


def with_overrides(cfg: Config, temperature=None, alpha_ce=None, alpha_squad=None,
                   teacher_logits=None) -> Config:
    changes = {k: v for k, v in dict(temperature=temperature, alpha_ce=alpha_ce,
                                     alpha_squad=alpha_squad, teacher_logits=teacher_logits).items()
               if v is not None}
    return cfg.replace(distill=changes) if changes else cfg


def distill_checkpoints(cfg: Config, out_dir: Path, seed: int, role: str) -> Checkpoints:
    """The resume state of a distilled student trained in the scratch folder out_dir."""
    return Checkpoints.prepare(out_dir, training_identity(
        cfg, role=role, seed=seed, teacher_dir=teacher_stage.trained_folder(cfg)))


def distill_student(cfg: Config, out_dir: Path, seed: int, handle: RunHandle,
                    role: str = "distill", callbacks=(), save: bool = True,
                    resume: bool = False) -> Fitted:
    """Train one distilled student with the loss settings of `cfg.distill`, logging to the
    run `handle` that its caller opened (a trial, best, seeds, `distill_run`).

    `resume`: out_dir is a persistent scratch folder its caller owns (files.staged_dir with
    keep=True, files.scratch_dir), given to `distill_run` too: the training checkpoints
    there and, run again after a kill, resumes (study.fit.fit)."""
    splits, _ = load_splits(cfg)
    _, teacher_tok, teacher_dir = teacher_stage.load_trained(cfg)
    student, tokenizer = build_student(cfg.student, seed)
    d = cfg.data
    check_same_tokenization(teacher_tok, tokenizer, splits["train"], d.max_length, d.doc_stride,
                            str(teacher_dir), cfg.student.init)
    return fit(cfg, role=role, model=student, tokenizer=tokenizer, spec=cfg.student.train,
               out_dir=out_dir, seed=seed, distill=cfg.distill,
               teacher=lambda: teacher_stage.load_trained(cfg)[0],
               teacher_dir=teacher_dir, callbacks=callbacks, save=save, handle=handle,
               checkpoints=distill_checkpoints(cfg, out_dir, seed, role) if resume else None)


def prepare_caches(cfg: Config) -> None:
    """What the trainings of `cfg` read and the first one would otherwise make: the student's
    windows and, when they are cached, the teacher's logits on them. Made once before the
    search's or the seeds' trainings start (side by side or not), not by each at once, and
    with `runtime.threads`, as the `distill` stage makes them: the logits' low bits do not
    depend on how many trainings run at once."""
    from study.fit import apply_runtime, data_windows, device, teacher_logits
    from study.modeling import student_tokenizer

    apply_runtime(cfg)

    tokenizer = student_tokenizer(cfg.student)
    _, _, windows = data_windows(cfg, tokenizer)
    d = cfg.distill
    if d.teacher_logits == "cache":
        _, _, teacher_dir = teacher_stage.load_trained(cfg)
        teacher_logits(cfg, d, lambda: teacher_stage.load_trained(cfg)[0], teacher_dir,
                       tokenizer, windows, device(cfg))


@contextmanager
def distill_run(cfg: Config, seed: int, run_name: str, role: str = "distill",
                tags: dict | None = None, out_dir: Path | None = None) -> Iterator[RunHandle]:
    """The run of a student distilled outside the search (stage distill, seeds), with its
    params and config. `out_dir`: the scratch folder of a resumable training
    (`distill_student(..., resume=True)` in the same folder and with the same role): a run
    it recorded there and did not finish is continued."""
    _, hashes = load_splits(cfg)
    # A missing teacher is refused before any run is opened.
    params = {**student_params(cfg, seed), "teacher": str(teacher_stage.trained_folder(cfg)),
              **cfg.distill.model_dump()}
    record = distill_checkpoints(cfg, out_dir, seed, role).run_record if out_dir is not None else None
    with Tracker(cfg).run(run_name, role, params=params, tags=tags, split_hashes=hashes,
                          record=record) as h:
        h.log_dict(cfg.to_dict(), "config.json")
        yield h


def run(cfg: Config) -> dict:
    with staged_dir(Layout.of(cfg).distill.root, keep=True) as out, \
            distill_run(cfg, cfg.seed, "distill", out_dir=out) as handle:
        doc = distill_student(cfg, out, cfg.seed, handle, resume=True).doc
    d = cfg.distill
    print(f"distilled (T={d.temperature}, alpha_ce={d.alpha_ce}, alpha_squad={d.alpha_squad}): "
          f"tune F1 {doc['tune']['f1']:.2f}, dev EM/F1 "
          f"{doc['dev']['exact_match']:.2f}/{doc['dev']['f1']:.2f}")
    return doc
