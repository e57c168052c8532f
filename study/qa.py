"""Question answering with a trained model: the project's one inference path.

transformers removed pipeline("question-answering") in 5.3; this replaces it with the
study's own pieces, so that an answer is found the same way everywhere (final tune/dev
scores, `study predict`, latency, the MLflow pyfunc model and `mlflow models serve`):

    windows    study.data.eval_features (max length, doc stride, context offsets)
    forward    batched, study.modeling.model_inputs (DistilBERT takes no token_type_ids)
    answer     study.postprocess.best_spans (n-best start x end search across windows)

    qa = QuestionAnswerer.from_pretrained("artifacts/default/best/model")
    qa("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris.")  # Span(text='Paris', ...)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from study.data import MODEL_INPUTS, eval_features
from study.modeling import inference_autocast, load_qa_model, load_tokenizer, model_inputs
from study.postprocess import Span, best_spans


class OutOfTime(Exception):
    """The deadline passed before every window was read (windows done, windows in all)."""

    def __init__(self, done: int, total: int):
        super().__init__(f"{done} of {total} windows read before the deadline")
        self.done, self.total = done, total


@dataclass(frozen=True)
class QASettings:
    """How questions become windows and windows become answers (params: data.*, eval.*)."""
    max_length: int = 384
    doc_stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30
    batch_size: int = 32

    @classmethod
    def from_config(cls, cfg) -> QASettings:
        return cls(max_length=cfg.data.max_length, doc_stride=cfg.data.doc_stride,
                   n_best=cfg.eval.n_best, max_answer_length=cfg.eval.max_answer_length,
                   batch_size=cfg.eval.batch_size)


@dataclass
class QuestionAnswerer:
    model: Any
    tokenizer: Any
    settings: QASettings = field(default_factory=QASettings)
    # runtime.mixed_precision: on a GPU the model answers in the precision runs train in
    # (bf16 where the GPU has it); on the CPU in float32.
    precision: str = "auto"

    @classmethod
    def from_pretrained(cls, path: str, settings: QASettings | None = None,
                        device: str | None = None, precision: str = "auto") -> QuestionAnswerer:
        """A saved model folder (safetensors + tokenizer), on `device` (default: cuda if any)."""
        model = load_qa_model(str(path), require_head=True)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model.eval(), load_tokenizer(str(path)), settings or QASettings(), precision)

    # ----------------------------------------------------------------- the three steps
    def windows(self, records: Sequence[dict]) -> dict[str, list]:
        """Every window of every record (`id`, `question`, `context`), in record order."""
        s = self.settings
        batch = {k: [r[k] for r in records] for k in ("id", "question", "context")}
        return eval_features(batch, self.tokenizer, s.max_length, s.doc_stride)

    @torch.inference_mode()
    def window_logits(self, features, batch_size: int | None = None, progress: bool = False,
                      deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits of each window, rows padded with -100 past its length.
        `deadline` (time.monotonic()): OutOfTime is raised before a batch that would end
        after it, judged by the batch before (one batch of 64 windows takes seconds on a
        busy CPU), so a caller with a time limit stops within it instead of computing on."""
        from tqdm.auto import tqdm

        from study.windows import longest_first, pad_batch

        bs = batch_size or self.settings.batch_size
        cols = [c for c in MODEL_INPUTS if c in features]
        n = len(features["input_ids"])
        width = max((len(ids) for ids in features["input_ids"]), default=0)
        starts = np.full((n, width), -100.0, dtype=np.float32)
        ends = np.full((n, width), -100.0, dtype=np.float32)
        self.model.eval()
        device = next(self.model.parameters()).device
        last = 0.0  # seconds the previous batch took
        order = longest_first(features["input_ids"])  # batches that pad little
        for i in tqdm(range(0, n, bs), desc="answering", unit="batch",
                      disable=not progress or n <= bs):
            started = time.monotonic()
            if deadline is not None and started + last > deadline:
                raise OutOfTime(i, n)
            idx = order[i:i + bs]
            rows = {c: [features[c][j] for j in idx] for c in cols}
            batch = {k: v.to(device) for k, v in pad_batch(rows, self.tokenizer).items()}
            with inference_autocast(self.precision, device):
                out = self.model(**model_inputs(self.model, batch))
            length = out.start_logits.shape[1]
            starts[idx, :length] = out.start_logits.float().cpu().numpy()
            ends[idx, :length] = out.end_logits.float().cpu().numpy()
            last = time.monotonic() - started
        return starts, ends

    def spans(self, records: Sequence[dict], features, starts: np.ndarray,
              ends: np.ndarray) -> dict[str, Span]:
        s = self.settings
        return best_spans(records, features, starts, ends, s.n_best, s.max_answer_length)

    # ----------------------------------------------------------------- entry points
    def answer_records(self, records: Sequence[dict], batch_size: int | None = None,
                       progress: bool = False, features: dict[str, list] | None = None,
                       deadline: float | None = None) -> dict[str, Span]:
        """id -> best Span, for records with `id`, `question` and `context`. `features`: their
        windows when already made with these settings (study.windows), else made here."""
        features = self.windows(records) if features is None else features
        starts, ends = self.window_logits(features, batch_size, progress, deadline)
        return self.spans(records, features, starts, ends)

    def predict(self, questions: Sequence[str], contexts: Sequence[str],
                progress: bool = False, deadline: float | None = None) -> list[Span]:
        """One Span per (question, context) pair, in order."""
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        records = [{"id": str(i), "question": q, "context": c}
                   for i, (q, c) in enumerate(zip(questions, contexts))]
        spans = self.answer_records(records, progress=progress, deadline=deadline)
        return [spans[r["id"]] for r in records]

    def __call__(self, question: str, context: str) -> Span:
        return self.predict([question], [context])[0]
