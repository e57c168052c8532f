"""`study bench --input-pipeline`: the training input pipeline with the model removed (the
Trainer's train dataloader, the collator, the cached-logit lookup), for the project's padded
windows and the former Arrow rows + DataCollatorWithPadding; into reports/bench.json
`input_pipeline`."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from transformers import DataCollatorWithPadding

from study.bench.common import random_cache, write_section
from study.config import Config
from study.fit import apply_runtime, training_arguments
from study.trainer import DistillationTrainer


def run(cfg: Config, batches: int = 600, batch_size: int = 32, length: int = 384) -> dict:
    """The training input pipeline with the model removed: the Trainer's own train dataloader
    (sampler, collation, device placement) over the embedded questions' windows at `length`,
    and the cached teacher logits looked up for every batch, as DistillationTrainer does; for
    the project's padded windows and, beside them, the former Arrow rows + DataCollatorWithPadding."""
    from study import data
    from study.modeling import load_tokenizer
    from study.windows import PadToLongest, Windows, padded_windows

    apply_runtime(cfg)
    tokenizer = load_tokenizer("embedded", "distilbert")
    feats = data.build_train_features(data.load_squad_file(data.EMBEDDED_DATA), tokenizer,
                                      length, length // 3)
    spec = cfg.student.train.replace(batch_size=batch_size, evals_per_epoch=0, max_steps=batches)
    paths = {"padded_windows": (lambda: padded_windows(Windows(key=f"bench-{length}", train=feats),
                                                       tokenizer), PadToLongest(tokenizer)),
             "arrow_rows": (lambda: feats, DataCollatorWithPadding(tokenizer))}
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = random_cache(Path(tmp) / "cache", len(feats), length)
        args = training_arguments(cfg, spec, Path(tmp), len(feats), cfg.seed, has_eval=False,
                                  distilling=True)
        cache.place(args.device)
        for name, (dataset, collator) in paths.items():
            t0 = time.perf_counter()
            trainer = DistillationTrainer(model=_no_model(), args=args, train_dataset=dataset(),
                                          data_collator=collator, processing_class=tokenizer,
                                          teacher_logits=cache)
            shapes, seconds = _drain(trainer, batches, args.device)
            rates[name] = {"seconds": round(seconds, 3),
                           "setup_seconds": round(time.perf_counter() - t0 - seconds, 3),
                           "batches_per_second": round(batches / seconds, 1)}
    rate = rates["padded_windows"]["batches_per_second"]
    section = {
        "what": "the Trainer's train dataloader + the training collator + cached-logit lookup, "
                "no model", "windows": len(feats), "batch_size": batch_size, "max_length": length,
        "mean_padded_length": round(sum(shapes) / len(shapes), 1),
        "full_length_batches": sum(s == length for s in shapes), "batches": batches,
        "batches_per_second": rate, "paths": rates, "target_batches_per_second": 480,
        "target_met": rate >= 480, "dataloader_num_workers": args.dataloader_num_workers,
        # Other work on the machine slows both paths: the load it ran under, read at the end.
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    section = write_section(cfg, "input_pipeline", section)
    print(f"input pipeline: {rate:.0f} batches/s of {batch_size} x <= {length} "
          f"(mean length {section['mean_padded_length']}; Arrow rows + "
          f"DataCollatorWithPadding: {rates['arrow_rows']['batches_per_second']:.0f}); target 480")
    return section


def _drain(trainer, batches: int, device) -> tuple[list[int], float]:
    """`batches` training batches with their teacher logits, as the distiller reads them, from
    one train dataloader iterated epoch after epoch as the Trainer does: their padded lengths
    and the seconds they took."""
    import torch

    loader = trainer.get_train_dataloader()
    shapes, epoch = [], 0
    t0 = time.perf_counter()
    while len(shapes) < batches:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            ids = batch["input_ids"]
            trainer.teacher_logits.lookup(batch["feature_index"], ids.shape[1], ids.device)
            shapes.append(ids.shape[1])
            if len(shapes) == batches:
                break
        epoch += 1
    if torch.cuda.is_available() and device.type == "cuda":
        torch.cuda.synchronize()
    return shapes, time.perf_counter() - t0


def _no_model():
    """The smallest module the Trainer accepts: the input pipeline is timed without a model."""
    import torch

    return torch.nn.Linear(1, 1)

