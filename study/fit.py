"""The fit-and-score path shared by every stage that trains (teacher, baseline, distill,
search trials, seeds): features, Trainer, evaluation on tune and dev, files, MLflow."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import shutil
import time
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from study.config import Config, DistillConfig, TrainSpec
from study.data import SPLITS, read_split, references
from study.files import read_json, write_json
from study.layout import CheckpointDir, Layout, StageDir
from study.metric import squad_metrics
from study.modeling import parameter_count, precision, save_model
from study.postprocess import postprocess_predictions
from study.qa import QASettings, QuestionAnswerer
from study.results import write_stage_metrics
from study.tracking import (
    CACHE_SHA_TAG,
    CACHE_TAG,
    TEACHER_TAG,
    THREADS_TAG,
    MlflowLogCallback,
    RunHandle,
)
from study.teacher_logits import TeacherLogitCache, build_or_load, weights_hash
from study.trainer import (
    CheckpointState,
    DistillationTrainer,
    QuestionAnsweringTrainer,
    eval_steps,
)
from study.windows import PadToLongest, Windows, load_windows, padded_windows


_SPLITS: dict[tuple[str, str], tuple[dict[str, list[dict]], dict[str, str]]] = {}


def load_splits(cfg: Config) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """The prepared splits and their hashes (from the manifest `study prepare` wrote); read
    once per process and data version."""
    d = Layout.of(cfg).data
    manifest = read_json(d.manifest, "split manifest", "run `study prepare` first")
    hashes = {k: v["sha256"] for k, v in manifest["splits"].items()}
    memo = (str(d.root), "|".join(f"{k}={hashes[k]}" for k in sorted(hashes)))
    if memo not in _SPLITS:
        _SPLITS[memo] = ({name: read_split(d, name) for name in SPLITS}, hashes)
    return _SPLITS[memo]


def data_windows(cfg: Config, tokenizer, names: Sequence[str] = SPLITS
                 ) -> tuple[dict[str, list[dict]], dict[str, str], Windows]:
    """Splits, their hashes and the windows of `names` for `tokenizer`: the work that depends
    only on the data version, done once (see study.windows)."""
    splits, hashes = load_splits(cfg)
    return splits, hashes, load_windows(Layout.of(cfg).windows, splits, hashes, tokenizer,
                                        cfg.data.max_length, cfg.data.doc_stride, names)


def device(cfg: Config) -> str:
    if cfg.runtime.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.runtime.device


def apply_runtime(cfg: Config) -> None:
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)


def logging_steps(n_features: int, spec: TrainSpec) -> int:
    """Steps between two training logs: a quarter of an epoch, or the evaluation interval."""
    steps_per_epoch = math.ceil(n_features / spec.batch_size)
    every = eval_steps(n_features, spec.batch_size, spec.evals_per_epoch)
    return max(1, min(every, steps_per_epoch // 4 or 1))


def checkpoint_steps(n_features: int, spec: TrainSpec) -> int:
    """Steps between two checkpoints of a resumable training: once an epoch, at the first
    logging step at or after the epoch's end (a checkpoint must fall where the Trainer has
    just logged: study.trainer.CheckpointState).

    Why once an epoch: a checkpoint (weights and Adam state) is 208 MB for the default
    profile's student and 272 MB for its teacher, written in 1-2.4 s at a load average of
    8-12 on 2 cores (a step then took 10-19 s; an epoch is 92 and 46 steps); the smoke
    student's 165 MB took 2-4 s against a 9-step epoch of ~35 s at that load. Every logging
    step (4 an epoch) would cost four times that, for at most an epoch of work saved. On the
    paper profile an epoch is 2,381 steps (~4-5 min on one GPU at the measured ~100 ms step)
    against seconds to write BERT-base's ~1.3 GB."""
    log = logging_steps(n_features, spec)
    return log * math.ceil(math.ceil(n_features / spec.batch_size) / log)


def training_arguments(cfg: Config, spec: TrainSpec, out_dir: Path, n_features: int,
                       seed: int, has_eval: bool, distilling: bool,
                       checkpoints: CheckpointDir | None = None) -> TrainingArguments:
    """`checkpoints`: a resumable training's checkpoint folder (the Trainer's output_dir)."""
    dev = device(cfg)
    mp = precision(cfg.runtime.mixed_precision, dev)
    every = eval_steps(n_features, spec.batch_size, spec.evals_per_epoch)
    saving: dict[str, Any] = {"save_strategy": "no", "output_dir": str(out_dir / "trainer")}
    if checkpoints is not None:
        # The newest checkpoint only: the Trainer deletes the older one after the new one's
        # trainer_state.json, its last file, is written.
        saving = {"save_strategy": "steps", "output_dir": str(checkpoints.root),
                  "save_steps": checkpoint_steps(n_features, spec), "save_total_limit": 1}
    kwargs: dict[str, Any] = dict(
        **saving, seed=seed, data_seed=seed,
        learning_rate=spec.learning_rate, num_train_epochs=spec.epochs, max_steps=spec.max_steps,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=cfg.eval.batch_size, weight_decay=spec.weight_decay,
        lr_scheduler_type=spec.lr_scheduler,
        eval_strategy="steps" if (has_eval and spec.evals_per_epoch) else "no",
        eval_steps=every, logging_steps=logging_steps(n_features, spec),
        report_to="none", use_cpu=dev == "cpu",
        # torch's fused AdamW, named rather than left to the Trainer's default (which depends
        # on the transformers and torch versions: the for-loop AdamW in older 4.x releases):
        # the implementation decides the low bits of every update, and the for-loop one costs
        # more a step on the CPU (bench.json `cpu`, bare_default_adamw_over_fused).
        optim="adamw_torch_fused",
        fp16=mp == "fp16", bf16=mp == "bf16", dataloader_num_workers=0,
        # Its per-step NaN/inf check reads the loss off the device every step (a host
        # synchronisation), only to hide a non-finite step from the logged loss; off, a
        # diverged run shows in its loss. Finite losses log the same numbers either way.
        logging_nan_inf_filter=False,
        # The distillation trainer needs feature_index and token_type_ids for the teacher.
        remove_unused_columns=not distilling, disable_tqdm=False,
    )
    kwargs.update(warmup_args(spec.warmup_ratio))
    if spec.group_by_length:
        kwargs.update(group_by_length_args())
    return TrainingArguments(**kwargs)


def warmup_args(ratio: float) -> dict[str, Any]:
    """The Trainer's own warm-up, a share of the steps it will actually train (max_steps
    included); transformers >= 5 takes the ratio as a float warmup_steps."""
    if "warmup_ratio" in inspect.signature(TrainingArguments.__init__).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": float(ratio)}


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


# ------------------------------------------------------------------ resumable trainings
def code_fingerprint() -> str:
    """SHA-256 of the `study` package's Python sources: a checkpoint is resumed only by the
    code that made it."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def training_identity(cfg: Config, *, role: str, seed: int,
                      teacher_dir: Path | None = None) -> dict[str, Any]:
    """What decides a training's numbers, beyond the checkpoint itself: its config (all of
    it: a stricter key than needed costs a restart, never a mixed training), role, seed,
    data, code and, when distilling, the trained teacher's files."""
    _, hashes = load_splits(cfg)
    teacher = None
    if teacher_dir is not None:
        teacher = {f.name: [f.stat().st_size, f.stat().st_mtime_ns]
                   for f in sorted(Path(teacher_dir).glob("*.safetensors"))}
    return {"config": cfg.hash(), "role": role, "seed": seed, "splits": hashes,
            "code": code_fingerprint(), "teacher": teacher}


@dataclass(frozen=True)
class Checkpoints:
    """A resumable training's checkpoints in its scratch folder (layout.CheckpointDir): the
    Trainer's own (`save_strategy`, `train(resume_from_checkpoint=...)`), the MLflow run
    they belong to (tracking.Tracker.run's `record`) and the identity of the training.

    The scratch folder belongs to one live process (files.staged_dir / files.scratch_dir);
    what a killed or failed run left there is resumed by the same training, and cleared
    for any other."""

    dir: CheckpointDir

    @classmethod
    def prepare(cls, scratch: Path, identity: dict[str, Any]) -> Checkpoints:
        d = StageDir(Path(scratch)).checkpoints
        recorded = None
        if d.identity.exists():
            try:
                recorded = json.loads(d.identity.read_text())
            except ValueError:  # cut short by a kill: unknown, so not resumable
                recorded = None
        if recorded != json.loads(json.dumps(identity)):
            shutil.rmtree(d.root, ignore_errors=True)
        d.root.mkdir(parents=True, exist_ok=True)
        write_json(d.identity, identity)
        return cls(d)

    @property
    def run_record(self) -> Path:
        return self.dir.run

    def last(self) -> tuple[Path, int] | None:
        """The newest complete checkpoint and its step. The Trainer writes its state
        (TRAINER_STATE_NAME) last: a checkpoint cut short by a kill has none (or half of one)
        and is skipped."""
        found = []
        for folder in self.dir.root.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            try:
                state = TrainerState.load_from_json(str(folder / TRAINER_STATE_NAME))
            except (OSError, ValueError, TypeError):
                continue
            if folder.name == f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}":
                found.append((state.global_step, folder))
        if not found:
            return None
        step, folder = max(found)
        return folder, step

    def clear(self) -> None:
        shutil.rmtree(self.dir.root, ignore_errors=True)


@dataclass
class Fitted:
    """A trained (or scored) model's metrics document and its answers, id -> text, per split."""
    doc: dict[str, Any]
    predictions: dict[str, dict[str, str]]


def make_trainer(cfg: Config, *, model, tokenizer, spec: TrainSpec, splits, windows: Windows,
                 out_dir: Path, seed: int, distill: DistillConfig | None, teacher,
                 teacher_dir: Path | None, checkpoints: Checkpoints | None = None
                 ) -> tuple[QuestionAnsweringTrainer, float]:
    """The Trainer for one training, and the seconds spent on the teacher-logit cache."""
    args = training_arguments(cfg, spec, out_dir, n_train_windows(windows), seed, has_eval=True,
                              distilling=distill is not None,
                              checkpoints=checkpoints.dir if checkpoints else None)
    common = dict(model=model, args=args,
                  train_dataset=padded_windows(windows, tokenizer,
                                               train_columns(windows.train, model,
                                                             distill is not None)),
                  eval_dataset=windows.tune, eval_examples=splits["tune"],
                  data_collator=PadToLongest(tokenizer),
                  post_process_function=_post_process(cfg), processing_class=tokenizer)
    if distill is None:
        return QuestionAnsweringTrainer(**common), 0.0
    logits, t0 = None, time.time()
    if distill.alpha_ce > 0 and distill.teacher_logits == "cache":
        logits = teacher_logits(cfg, distill, teacher, teacher_dir, tokenizer, windows,
                                args.device).place(args.device)
    live = teacher() if (logits is None and distill.alpha_ce > 0) else None
    trainer = DistillationTrainer(
        **common, teacher=live, teacher_logits=logits, temperature=distill.temperature,
        alpha_ce=distill.alpha_ce, alpha_squad=distill.alpha_squad)
    return trainer, time.time() - t0


def teacher_logits(cfg: Config, distill: DistillConfig, teacher, teacher_dir: Path | None,
                   tokenizer, windows: Windows, device) -> TeacherLogitCache:
    """The teacher's cached logits on the train windows (made on a miss)."""
    d = cfg.data
    return build_or_load(teacher, teacher_dir, tokenizer, windows.train,
                         root=Layout.of(cfg).teacher_cache, max_length=d.max_length,
                         doc_stride=d.doc_stride, batch_size=cfg.eval.batch_size, device=device,
                         dtype=distill.cache_dtype, features_key=windows.key,
                         precision=cfg.runtime.mixed_precision)


def training_tags(trainer, distill: DistillConfig | None, teacher,
                  teacher_dir: Path | None) -> dict[str, Any]:
    """What this training's numbers depend on beyond its config and data, for its run's tags
    (`study rerun` reads them): the thread count it trains with, and when it distils, the
    teacher's weights and the teacher-logit cache it reads."""
    tags: dict[str, Any] = {THREADS_TAG: torch.get_num_threads()}
    if distill is not None and distill.alpha_ce > 0:
        tags[TEACHER_TAG] = weights_hash(teacher_dir, teacher)  # hashed once per process
        cache = getattr(trainer, "teacher_logits", None)
        if cache is not None:
            tags[CACHE_TAG] = cache.meta["key"]
            if "sha256" in cache.meta:  # caches made before it was recorded have none
                tags[CACHE_SHA_TAG] = cache.meta["sha256"]
    return tags


def score(cfg: Config, model, tokenizer, splits: dict[str, list[dict]], windows: Windows,
          names: Sequence[str] = ("tune", "dev"), answered: dict[str, dict] | None = None
          ) -> tuple[dict[str, dict], dict[str, dict]]:
    """EM/F1 and answers per split, from the predictor users get (study predict, the served
    model), on the windows already made for this data version. `answered`: answers of this
    model already found for some splits (the Trainer's evaluation of the final model, which
    answers as the predictor does), scored without answering again."""
    answerer = QuestionAnswerer(model, tokenizer, QASettings.from_config(cfg),
                                precision=cfg.runtime.mixed_precision)
    scores, predictions = {}, {}
    for name in names:
        if answered and name in answered:
            predictions[name] = answered[name]
        else:
            spans = answerer.answer_records(splits[name], features=windows.eval_columns(name))
            predictions[name] = {qid: span.text for qid, span in spans.items()}
        scores[name] = squad_metrics(predictions[name], references(splits[name]))
    return scores, predictions


def final_evaluation(trainer) -> dict[str, dict]:
    """The Trainer's answers on `tune` when its last evaluation was of the final model:
    transformers 5 evaluates a step-based schedule once more at its last step, so the final
    tune score need not answer tune again (a ninth of a search trial's inference;
    bench.json `cpu`, `trial`). Empty when the last evaluation came before the last step."""
    evals = [e["step"] for e in trainer.state.log_history if "eval_f1" in e]
    if evals and evals[-1] == trainer.state.global_step and trainer.last_predictions:
        return {"tune": trainer.last_predictions}
    return {}


def train_columns(train, model, distilling: bool) -> list[str]:
    """The train windows' columns a training reads: all of them when distilling (the trainer
    looks up feature_index), else those the model's forward takes, as the Trainer keeps them."""
    if distilling:
        return train.column_names
    takes = inspect.signature(model.forward).parameters
    return [c for c in train.column_names if c in takes]


def n_train_windows(windows: Windows) -> int:
    return len(windows.train) if windows.train is not None else 0


def _history(trainer) -> tuple[list[dict], list[dict]]:
    log = trainer.state.log_history
    curve = [{"step": e["step"], "tune_exact_match": e["eval_exact_match"], "tune_f1": e["eval_f1"]}
             for e in log if "eval_f1" in e]
    return curve, [{"step": e["step"], "loss": e["loss"]} for e in log if "loss" in e]


def _record(folder: StageDir, handle: RunHandle | None, fitted: Fitted, model, tokenizer,
            save: bool) -> None:
    """The run's files (metrics, predictions, model) and their MLflow copies."""
    doc = fitted.doc
    for name, texts in fitted.predictions.items():
        write_json(folder.predictions(name), texts)
    if save:
        save_model(model, tokenizer, folder.model)
    write_stage_metrics(folder.metrics, doc)
    if handle is None:
        return
    final = {f"{split}_{k}": v for split in ("tune", "dev") for k, v in doc[split].items()}
    final.update(train_seconds=doc["train_seconds"], parameters=doc["parameters"])
    handle.log_metrics(final, step=doc["steps"])
    for path in (folder.metrics, folder.predictions("tune"), folder.predictions("dev")):
        handle.log_artifact(path)


def fit(cfg: Config, *, role: str, model, tokenizer, spec: TrainSpec, out_dir: Path,
        handle: RunHandle | None, seed: int | None = None, distill: DistillConfig | None = None,
        teacher=None, teacher_dir: Path | None = None, callbacks: Sequence = (),
        train: bool = True, save: bool = True, checkpoints: Checkpoints | None = None) -> Fitted:
    """Train (unless train=False), score tune and dev, write predictions/metrics/model into
    out_dir, and log them to `handle`. `teacher` is a zero-argument function returning the
    teacher model, called only when the teacher must run (live logits or a cache miss).

    `checkpoints` (in out_dir, a persistent scratch folder): the training checkpoints there
    once an epoch and starts from the newest checkpoint it finds, with the numbers an
    uninterrupted training gives (the same steps, losses, curve, scores and answers; its
    run, continued, holds each metric once); they are removed once everything is recorded."""
    apply_runtime(cfg)
    folder = StageDir(out_dir)
    seed = cfg.seed if seed is None else seed
    started = time.time()
    # A model that is only scored (a given teacher checkpoint) needs no train windows.
    splits, _, windows = data_windows(cfg, tokenizer, SPLITS if train else ("tune", "dev"))
    trainer, cache_seconds = make_trainer(
        cfg, model=model, tokenizer=tokenizer, spec=spec, splits=splits, windows=windows,
        out_dir=out_dir, seed=seed, distill=distill, teacher=teacher, teacher_dir=teacher_dir,
        checkpoints=checkpoints)
    last = checkpoints.last() if (checkpoints is not None and train) else None
    if checkpoints is not None:
        trainer.add_callback(CheckpointState(trainer, trainer.args.save_steps,
                                             math.ceil(n_train_windows(windows) / spec.batch_size)))
        if last is not None:
            print(f"{role}: resuming from step {last[1]} ({last[0]})", flush=True)
            if handle is not None:
                handle.set_tags({"resumed_from_step": last[1]})
    if handle is not None:
        handle.set_tags(training_tags(trainer, distill, teacher, teacher_dir))
        trainer.add_callback(MlflowLogCallback(handle))
    for cb in callbacks:
        trainer.add_callback(cb)
    t0 = time.time()
    if train:
        trainer.train(resume_from_checkpoint=str(last[0]) if last else None)
    train_seconds = time.time() - t0 if train else 0.0
    scores, predictions = score(cfg, trainer.model, tokenizer, splits, windows,
                                answered=final_evaluation(trainer) if train else None)
    curve, losses = _history(trainer)
    doc = {
        "role": role, "profile": cfg.profile, "seed": seed,
        "tune": scores["tune"], "dev": scores["dev"], "curve": curve, "train_loss": losses,
        "train_windows": n_train_windows(windows), "steps": trainer.state.global_step,
        "parameters": parameter_count(model), "train_seconds": round(train_seconds, 2),
        "teacher_cache_seconds": round(cache_seconds, 2),
        "wall_seconds": round(time.time() - started, 2),
        "distill": distill.model_dump() if distill else None,
        "mlflow_run_id": handle.run_id if handle else None,
        "resumed_from_step": last[1] if last else 0,
    }
    fitted = Fitted(doc, predictions)
    _record(folder, handle, fitted, trainer.model, tokenizer, save)
    if checkpoints is not None:
        checkpoints.clear()
    return fitted
