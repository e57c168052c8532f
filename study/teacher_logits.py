"""The teacher is paid for once: its start/end logits on the training windows, on disk.

The teacher is frozen and in eval mode, so its logits for a training window never
change. They are computed once per (teacher weights, tokenizer, max length, doc stride,
windows) -- the key is a hash of exactly those -- stored as two memory-mapped
[n_windows, max_length] arrays (float16 by default) and reused by every trial and epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from study.data import features_hash
from study.modeling import inference_autocast, model_inputs
from study.modeling import precision as resolve_precision


_WEIGHTS: dict[tuple, str] = {}


def _materialise(teacher):
    """The teacher model, from a model or from a zero-argument loader."""
    return teacher if isinstance(teacher, torch.nn.Module) else teacher()


def weights_hash(model_dir: Path | None, teacher) -> str:
    """Hash of the teacher's safetensors files (once per process while they are unchanged:
    440 MB for BERT-base), or of its tensors when it has no folder."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if model_dir else []
    if files:
        memo = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        if memo not in _WEIGHTS:
            _WEIGHTS[memo] = _hash_files(files)
        return _WEIGHTS[memo]
    h = hashlib.sha256()
    for name, tensor in sorted(_materialise(teacher).state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def cache_key(weights: str, tokenizer, max_length: int, doc_stride: int, features,
              features_key: str | None = None, precision: str = "no") -> str:
    """`features_key` names the windows when the caller knows them (study.windows' key, a hash
    of what made them) and saves hashing every window's ids. Logits computed in reduced
    precision (on a GPU) are other numbers: `precision` is part of the key then."""
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    parts = [weights, vocab, str(max_length), str(doc_stride),
             features_key or features_hash(features)]
    if precision != "no":
        parts.append(precision)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


class TeacherLogitCache:
    """The cached logits of one teacher on one set of windows, looked up by `feature_index`.

    Rows are read from the memory-mapped files (the CPU path), or, after `place` on an
    accelerator, from two tensors held on it (the whole cache, copied once: a lookup is an
    index on the device, with no host copy and no synchronisation) or, when the cache does
    not fit there, gathered on the host into pinned memory and copied without blocking."""

    # The share of the accelerator's free memory the whole cache may take (117 MB in float16
    # at SQuAD's size, well under this on any training GPU).
    DEVICE_SHARE = 0.25

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.start = np.load(self.directory / "start.npy", mmap_mode="r")
        self.end = np.load(self.directory / "end.npy", mmap_mode="r")
        self.resident: tuple[torch.Tensor, torch.Tensor] | None = None
        self.pinned = False

    @property
    def nbytes(self) -> int:
        return self.start.nbytes + self.end.nbytes

    def place(self, device) -> TeacherLogitCache:
        """Where lookups for training on `device` come from: on the CPU the memory-mapped
        files (unchanged), on an accelerator the whole cache on it when it fits, else pinned
        host memory."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        if self.nbytes <= self.DEVICE_SHARE * free:
            return self.to_device(device)
        self.pinned = True
        return self

    def to_device(self, device) -> TeacherLogitCache:
        """The whole cache on `device`, in its stored dtype, copied once."""
        self.resident = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device)
                              for a in (self.start, self.end))
        return self

    def lookup(self, feature_index: torch.Tensor, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resident is not None:
            start, end = self.resident
            idx = feature_index.detach().to(start.device, non_blocking=True)
            # float16 -> float32 is exact: the same numbers as the memory-mapped path.
            return tuple(a.index_select(0, idx)[:, :seq_len].to(device, torch.float32)
                         for a in (start, end))
        idx = feature_index.detach().cpu().numpy()
        # Fancy indexing on a memmap copies just these rows.
        s = torch.from_numpy(np.asarray(self.start[idx, :seq_len], dtype=np.float32))
        e = torch.from_numpy(np.asarray(self.end[idx, :seq_len], dtype=np.float32))
        if self.pinned:
            return s.pin_memory().to(device, non_blocking=True), e.pin_memory().to(device, non_blocking=True)
        return s.to(device), e.to(device)


@torch.no_grad()
def compute_logits(teacher, features, tokenizer, batch_size: int, device, max_length: int,
                   dtype: str, out_dir: Path, precision: str = "no") -> None:
    """The teacher's logits on every window, in the precision the run trains in on a GPU
    (`precision`: runtime.mixed_precision), float32 on the CPU. Batches in window order,
    padded once up front (study.windows.PaddedWindows): padding Arrow rows batch by batch
    capped the pass at ~600 windows/s on a GPU that runs the model at 4,500."""
    from study.windows import padded_rows

    n = len(features)
    start = np.lib.format.open_memmap(out_dir / "start.npy", mode="w+", dtype=dtype, shape=(n, max_length))
    end = np.lib.format.open_memmap(out_dir / "end.npy", mode="w+", dtype=dtype, shape=(n, max_length))
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in features.column_names]
    padded = padded_rows(features, tokenizer, cols)
    on_gpu = torch.device(device).type == "cuda"
    teacher = teacher.to(device).eval()
    for row in tqdm(range(0, n, batch_size), desc="teacher logits", leave=False):
        batch = padded.rows(range(row, min(row + batch_size, n))).collate()
        batch = {k: (v.pin_memory() if on_gpu else v).to(device, non_blocking=on_gpu)
                 for k, v in batch.items()}
        with inference_autocast(precision, device):
            out = teacher(**model_inputs(teacher, batch))
        b, length = batch["input_ids"].shape
        mask = batch["attention_mask"].bool()
        s = out.start_logits.float().masked_fill(~mask, 0).cpu().numpy()
        e = out.end_logits.float().masked_fill(~mask, 0).cpu().numpy()
        start[row:row + b] = 0
        end[row:row + b] = 0
        start[row:row + b, :length] = s
        end[row:row + b, :length] = e
    start.flush()
    end.flush()


def build_or_load(teacher, teacher_dir: Path | None, tokenizer, features, *, root: Path,
                  max_length: int, doc_stride: int, batch_size: int, device,
                  dtype: str = "float16", features_key: str | None = None,
                  precision: str = "no") -> TeacherLogitCache:
    """`teacher`: the model, or a zero-argument function loading it (called on a miss only).
    `precision`: runtime.mixed_precision; only on a GPU does it change the logits."""
    on_gpu = torch.device(device).type == "cuda"
    precision = resolve_precision(precision, device) if on_gpu else "no"
    key = cache_key(weights_hash(teacher_dir, teacher), tokenizer, max_length, doc_stride,
                    features, features_key, precision)
    directory = Path(root) / f"{key}-{dtype}"
    if (directory / "meta.json").exists():
        return TeacherLogitCache(directory)
    # Scratch folder private to this process: workers sharing one study may build the
    # same cache at once, and must not write into (or rename) each other's files.
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        compute_logits(_materialise(teacher), features, tokenizer, batch_size, device, max_length,
                       dtype, tmp, precision)
        # The key names what the logits were computed from, not how (e.g. the thread count,
        # which can move a float16 rounding): the content's hash tells two caches apart.
        (tmp / "meta.json").write_text(json.dumps({
            "key": key, "sha256": _hash_files([tmp / "start.npy", tmp / "end.npy"]),
            "windows": len(features), "max_length": max_length,
            "doc_stride": doc_stride, "dtype": dtype,
            "teacher": str(teacher_dir) if teacher_dir else None}, indent=2))
        # Written complete, then renamed: a killed run never leaves a half cache behind.
        try:
            tmp.rename(directory)
        except OSError:
            if not (directory / "meta.json").exists():
                raise
            # Another worker finished the same cache first; its logits are identical.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TeacherLogitCache(directory)
