"""`study bench --gpu`: at the paper's shapes (DistilBERT-base student, BERT-base teacher,
32 x 384), the bare training loop against the project's step, the teacher pass and the
GPU-busy share; into reports/bench.json `gpu`. Needs a CUDA GPU."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from study.bench.common import random_cache, write_section
from study.config import Config
from study.fit import apply_runtime, training_arguments
from study.trainer import DistillationTrainer
from study.windows import PadToLongest, padded_rows


def _paper_student():
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering
    return DistilBertForQuestionAnswering(DistilBertConfig())  # distilbert-base's shape


def _paper_teacher():
    from transformers import BertConfig, BertForQuestionAnswering
    return BertForQuestionAnswering(BertConfig())  # bert-base's shape


def _bare_step_ms(batch_size: int, length: int, warm: int, steps: int, dtype) -> float:
    """The hardware reference: forward, backward and AdamW of the student in a plain loop on
    random tokens already on the GPU, under autocast; no Trainer, no data loading."""
    import torch

    torch.manual_seed(0)
    model = _paper_student().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    ids = torch.randint(1000, 30000, (batch_size, length), device="cuda")
    mask = torch.ones_like(ids)
    sp, ep = (torch.randint(0, length, (batch_size,), device="cuda") for _ in range(2))

    def step():
        with torch.autocast("cuda", dtype=dtype):
            loss = model(input_ids=ids, attention_mask=mask, start_positions=sp, end_positions=ep).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1000


class _GpuBusy:
    """The share of samples (every 100 ms) in which the GPU ran a kernel (NVML utilisation)."""

    def __init__(self):
        import threading

        import torch
        self.samples: list[float] = []
        self._stop = threading.Event()
        try:
            torch.cuda.utilization()
            self.available = True
        except Exception:  # noqa: BLE001 - pynvml missing: the share is not measured
            self.available = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import torch
        while not self._stop.wait(0.1):
            self.samples.append(torch.cuda.utilization())

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    def share(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def _project_step_ms(cfg: Config, batch_size: int, length: int, warm: int, steps: int,
                     tmp: Path) -> tuple[float, float | None]:
    """The project's distillation step (DistillationTrainer, the project's TrainingArguments,
    its collator and a cached-logit lookup) on in-memory random windows; ms per step after
    `warm` steps, and the GPU-busy share over the timed steps."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from study.modeling import load_tokenizer

    n = batch_size * (warm + steps)
    rng = np.random.default_rng(0)
    feats = Dataset.from_dict({
        "input_ids": rng.integers(1000, 30000, (n, length)).tolist(),
        "attention_mask": np.ones((n, length), dtype=int).tolist(),
        "start_positions": rng.integers(0, length, n).tolist(),
        "end_positions": rng.integers(0, length, n).tolist(),
        "feature_index": list(range(n))})
    cache = random_cache(tmp / "gpu-cache", n, length)
    spec = cfg.student.train.replace(batch_size=batch_size, evals_per_epoch=0,
                                     max_steps=warm + steps)
    args = training_arguments(cfg, spec, tmp, n, cfg.seed, has_eval=False, distilling=True)
    cache.place(args.device)
    busy = _GpuBusy()
    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step in (warm, warm + steps):
                torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()
                if state.global_step == warm:
                    busy.__enter__()

    torch.manual_seed(0)
    tokenizer = load_tokenizer("embedded", "distilbert")
    trainer = DistillationTrainer(model=_paper_student(), args=args,
                                  train_dataset=padded_rows(feats, tokenizer),
                                  data_collator=PadToLongest(tokenizer),
                                  processing_class=tokenizer, teacher_logits=cache,
                                  callbacks=[Clock()])
    trainer.train()
    busy.__exit__()
    return (marks[warm + steps] - marks[warm]) / steps * 1000, busy.share()


def _teacher_windows_per_second(cfg: Config, length: int, batches: int, tmp: Path) -> float:
    """The teacher-logit pass as the project runs it (compute_logits, the run's precision) of
    a bert-base-shaped teacher over random windows at the eval batch size."""
    import numpy as np
    import torch
    from datasets import Dataset

    from study.modeling import load_tokenizer
    from study.teacher_logits import compute_logits

    bs = cfg.eval.batch_size
    n = bs * batches
    rng = np.random.default_rng(1)
    feats = Dataset.from_dict({"input_ids": rng.integers(1000, 30000, (n, length)).tolist(),
                               "attention_mask": np.ones((n, length), dtype=int).tolist(),
                               "token_type_ids": np.zeros((n, length), dtype=int).tolist()})
    tokenizer = load_tokenizer("embedded")
    teacher = _paper_teacher()
    out = tmp / "teacher-pass"
    out.mkdir()
    warm = feats.select(range(bs * 2))
    compute_logits(teacher, warm, tokenizer, bs, "cuda", length, "float16", out,
                   cfg.runtime.mixed_precision)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    compute_logits(teacher, feats, tokenizer, bs, "cuda", length, "float16", out,
                   cfg.runtime.mixed_precision)
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def run(cfg: Config, steps: int | None = None, batch_size: int = 32, length: int = 384) -> dict:
    """`study bench --gpu`: at the paper's shapes (DistilBERT-base student, BERT-base teacher,
    32 x 384), the bare training loop against the project's step, the teacher pass and the
    GPU-busy share, into the `gpu` section of reports/bench.json. Needs a CUDA GPU."""
    import torch

    from study.errors import StudyError
    from study.modeling import precision

    if not torch.cuda.is_available():
        raise StudyError("--gpu needs a CUDA GPU, and this machine has none "
                         "(`study bench --input-pipeline` runs on the CPU)")
    apply_runtime(cfg)
    steps = steps or 120
    mode = precision(cfg.runtime.mixed_precision, "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode, torch.float32)
    bare = _bare_step_ms(batch_size, length, 10, steps, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        project, busy = _project_step_ms(cfg, batch_size, length, 20, steps, Path(tmp))
        teacher_rate = _teacher_windows_per_second(cfg, length, 40, Path(tmp))
    section = {
        "shapes": {"batch_size": batch_size, "max_length": length, "student": "distilbert-base",
                   "teacher": "bert-base", "precision": mode, "steps_timed": steps},
        "bare_step_ms": round(bare, 2), "project_step_ms": round(project, 2),
        "project_over_bare": round(project / bare, 3), "target_project_over_bare": 1.3,
        "gpu_busy_share_training": busy, "target_gpu_busy_share": 0.8,
        "teacher_windows_per_second": round(teacher_rate, 1),
        "target_teacher_windows_per_second": 3500,
    }
    section = write_section(cfg, "gpu", section)
    g = section
    print(f"gpu: bare step {g['bare_step_ms']} ms, project step {g['project_step_ms']} ms "
          f"(x{g['project_over_bare']}), GPU busy {busy}, teacher {g['teacher_windows_per_second']} "
          "windows/s")
    return section

