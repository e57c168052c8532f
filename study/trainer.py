"""Trainer subclasses: QA evaluation (post-processing + SQuAD metric) and distillation.

As in transformers' examples/pytorch/question-answering/trainer_qa.py, the QA trainer
only overrides evaluate/predict; the distillation trainer only overrides compute_loss.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from study.data import MODEL_INPUTS
from study.loss import distillation_loss
from study.metric import squad_metrics
from study.modeling import forward_args, model_inputs
from study.windows import longest_first


class QuestionAnsweringTrainer(Trainer):
    """Evaluation = window logits -> post-processing -> official SQuAD EM/F1."""

    def __init__(self, *args, eval_examples=None, post_process_function: Callable | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_examples = eval_examples
        self.post_process_function = post_process_function
        self.last_predictions: dict[str, str] = {}

    def _get_eval_sampler(self, eval_dataset):
        # Post-processing pairs logit rows with features by position: evaluation must keep
        # feature order even when training groups batches by length (transformers applies
        # group_by_length to the eval sampler too, which silently scrambles every answer).
        return torch.utils.data.SequentialSampler(eval_dataset)

    def _model_columns(self, features):
        keep = [c for c in MODEL_INPUTS if c in features.column_names and c in forward_args(self.model)]
        return features.select_columns(keep)

    def _predict_texts(self, features, examples, description: str, prefix: str):
        start = time.time()
        # Longest windows first, in the predictor's order (study.windows.longest_first): its
        # batches, so the same answers; rows put back in feature order for post-processing.
        order = longest_first(features["input_ids"])
        loader = self.get_eval_dataloader(self._model_columns(features).select(order))
        output = self.evaluation_loop(loader, description=description,
                                      prediction_loss_only=False, metric_key_prefix=prefix)
        start_logits, end_logits = (_in_feature_order(a, order) for a in output.predictions)
        texts = self.post_process_function(examples, features, start_logits, end_logits)
        refs = {e["id"]: list(e["answers"]["text"]) for e in examples}
        scores = squad_metrics(texts, refs)
        metrics = {f"{prefix}_{k}": v for k, v in scores.items()}
        metrics[f"{prefix}_runtime"] = round(time.time() - start, 4)
        metrics[f"{prefix}_samples"] = len(examples)
        return texts, metrics

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "train_loss" in logs and self.state.global_step:
            # The end-of-training mean over every step, a resumed training's too (its sum is
            # restored by CheckpointState): transformers >= 5 divides by the steps of this
            # train() call only. The same division as the Trainer's when nothing resumed.
            logs["train_loss"] = self._total_loss_scalar / self.state.global_step
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, eval_examples=None, ignore_keys=None,
                 metric_key_prefix: str = "eval"):
        features = eval_dataset if eval_dataset is not None else self.eval_dataset
        examples = eval_examples if eval_examples is not None else self.eval_examples
        texts, metrics = self._predict_texts(features, examples, "Evaluation", metric_key_prefix)
        self.last_predictions = texts
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(self, test_dataset, test_examples=None, ignore_keys=None,
                metric_key_prefix: str = "test"):
        texts, metrics = self._predict_texts(test_dataset, test_examples, "Prediction",
                                             metric_key_prefix)
        return texts, metrics


def _in_feature_order(rows: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(rows)
    out[order] = rows
    return out


class DistillationTrainer(QuestionAnsweringTrainer):
    """Student training with the DistilBERT SQuAD loss.

    Teacher logits come either from `teacher_logits` (a TeacherLogitCache indexed by
    the `feature_index` column) or from a live `teacher` model run under no_grad.
    """

    def __init__(self, *args, teacher: torch.nn.Module | None = None, teacher_logits=None,
                 temperature: float = 2.0, alpha_ce: float = 0.5, alpha_squad: float = 0.5,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if alpha_ce > 0 and teacher is None and teacher_logits is None:
            raise ValueError("alpha_ce > 0 needs a teacher or cached teacher logits")
        self.teacher = teacher
        self.teacher_logits = teacher_logits
        self.temperature, self.alpha_ce, self.alpha_squad = temperature, alpha_ce, alpha_squad
        if teacher is not None:
            self.teacher = teacher.to(self.args.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        # The loss below is a batch mean, so the Trainer must scale it for gradient
        # accumulation itself rather than expect a sum over num_items_in_batch.
        self.model_accepts_loss_kwargs = False
        # The CE and KD parts of the loss, summed on the device between logging steps and
        # read (one host synchronisation) only when the Trainer logs, as it does its own loss.
        self.loss_parts = LossParts(("ce", "kd"))

    def _teacher_outputs(self, inputs: dict, seq_len: int, feature_index):
        if self.teacher_logits is not None:
            return self.teacher_logits.lookup(feature_index, seq_len, inputs["input_ids"].device)
        self.teacher.eval()
        with torch.no_grad():
            out = self.teacher(**model_inputs(self.teacher, inputs))
        return out.start_logits, out.end_logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        start_positions = inputs.pop("start_positions")
        end_positions = inputs.pop("end_positions")
        feature_index = inputs.pop("feature_index", None)
        outputs = model(**model_inputs(model, inputs))
        t_start = t_end = None
        if self.alpha_ce > 0:
            t_start, t_end = self._teacher_outputs(inputs, inputs["input_ids"].shape[1], feature_index)
        parts = distillation_loss(
            outputs.start_logits, outputs.end_logits, start_positions, end_positions,
            t_start, t_end, temperature=self.temperature, alpha_ce=self.alpha_ce,
            alpha_squad=self.alpha_squad, attention_mask=inputs.get("attention_mask"))
        if model.training:
            self.loss_parts.add(ce=parts.ce, kd=parts.kd)
        return (parts.loss, outputs) if return_outputs else parts.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # A training log (it carries the loss) also carries the parts' means since the last.
        if "loss" in logs:
            logs.update({f"loss_{name}": v for name, v in self.loss_parts.means().items()})
        super().log(logs, *args, **kwargs)


class LossParts:
    """Named loss parts summed on their device, step after step, with no host synchronisation;
    `means()` reads them (the one synchronisation) and starts a new interval.

    The sums are float64, added in step order: the same numbers as summing each step's value
    read as a Python float, as the trainer did when it read them every step."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, **parts: torch.Tensor) -> None:
        for name in self.names:
            value = parts[name].detach()
            # float64 where the device has it (MPS has not).
            value = value.to(torch.float32 if value.device.type == "mps" else torch.float64)
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def means(self) -> dict[str, float]:
        if not self.count:
            return {}
        out = {name: self.sums[name].item() / self.count for name in self.names}
        self.sums, self.count = {}, 0
        return out


class CheckpointState(TrainerCallback, ExportableState):
    """What a checkpoint must hold, beyond the Trainer's own files, for a resumed training to
    give the numbers of an uninterrupted one, and the rule that keeps it that small.

    - Checkpoints are taken only where the Trainer has just logged (`every`, the save
      interval, is a multiple of the logging interval; the Trainer's extra save at the last
      step is dropped unless it falls there): the loss sums kept between logging steps (the
      Trainer's own, and the CE/KD parts in `LossParts`) are then empty, so nothing of them
      is lost. Checked at every save.
    - The Trainer's running sum of the logged losses, from which it reports `train_loss` at
      the end: a resumed Trainer starts it at 0 (and would report the mean of the resumed
      steps only). Put back as the resumed training begins.
    - The torch RNG state as the current epoch began. Length-grouped batches
      (`TrainSpec.group_by_length`) are ordered by transformers' LengthGroupedSampler from the
      global torch RNG as the epoch's first batch is drawn; a Trainer resumed mid-epoch draws
      that order from its freshly seeded RNG (it restores the checkpoint's RNG only after
      skipping the trained batches), so the rest of the epoch would see other batches. The
      state is put back as the resumed epoch begins; the Trainer then restores the
      checkpoint's own RNG state for the steps, as it does.
    Saved in trainer_state.json through the Trainer's own `ExportableState` mechanism (read
    back here, not re-instantiated: `restore_callback_states_from_checkpoint` stays off).
    `_total_loss_scalar` is the Trainer's own name for that sum (4.46 to 5.x)."""

    def __init__(self, trainer: Trainer | None = None, every: int = 0, steps_per_epoch: int = 0):
        self.trainer, self.every, self.steps_per_epoch = trainer, every, steps_per_epoch
        self.epoch_rng: torch.Tensor | None = None  # torch's RNG as this epoch began
        self.resumed_rng: torch.Tensor | None = None  # to put back as the resumed epoch begins

    def state(self) -> dict:
        trainer = self.trainer
        parts = getattr(trainer, "loss_parts", None)
        if parts is not None and parts.count:
            raise RuntimeError("a checkpoint between two logging steps would lose the loss "
                               "parts summed since the last one")
        rng = None if self.epoch_rng is None else base64.b64encode(
            self.epoch_rng.numpy().tobytes()).decode()
        return {"args": {}, "attributes": {
            "total_loss": getattr(trainer, "_total_loss_scalar", 0.0), "epoch_rng": rng}}

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and self.every and state.global_step % self.every:
            control.should_save = False
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if not (state.global_step and isinstance(saved, dict)):
            return  # a training from the start
        attrs = saved["attributes"]
        self.trainer._total_loss_scalar = attrs["total_loss"]
        if state.global_step % self.steps_per_epoch and attrs["epoch_rng"] is not None:
            self.resumed_rng = torch.frombuffer(
                bytearray(base64.b64decode(attrs["epoch_rng"])), dtype=torch.uint8).clone()

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.resumed_rng is not None:
            torch.set_rng_state(self.resumed_rng)
            self.resumed_rng = None
        self.epoch_rng = torch.get_rng_state()


def eval_steps(n_features: int, batch_size: int, evals_per_epoch: int) -> int:
    steps_per_epoch = math.ceil(n_features / batch_size)
    return max(1, steps_per_epoch // max(1, evals_per_epoch))
