"""Tokenised windows, made once per data version and reused by every training that needs them.

Windows depend only on the prepared splits, the tokenizer, max length and doc stride (and on
the code that cuts them). They are keyed by a hash of exactly those, written under
`artifacts/<profile>/windows/<key>/` (Arrow, memory-mapped on load) and kept in memory for
the rest of the process: a search trial, a second worker or a resumed study loads them
instead of tokenising every split again (~35 s a trial at SQuAD's size on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study import data

# The code that turns records into windows is part of the key: changing it invalidates them.
_CODE = hashlib.sha256("".join(inspect.getsource(f) for f in (
    data._tokenize, data.train_features, data.eval_features, data.build_train_features,
    data.build_eval_features)).encode()).hexdigest()

_MEMO: dict[tuple[str, str], Windows] = {}


@dataclass(frozen=True)
class Windows:
    """The three splits' windows: train with labels and feature_index, tune/dev with offsets."""
    key: str
    train: Any  # datasets.Dataset
    tune: Any
    dev: Any

    def eval_columns(self, split: str) -> dict[str, list]:
        """A tune/dev split as plain columns, the form the predictor answers from."""
        return getattr(self, split).to_dict()


def tokenizer_fingerprint(tokenizer) -> str:
    """Everything that decides token ids: the fast tokenizer's full pipeline, or its vocab."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = f"{type(tokenizer).__name__}|{tokenizer.padding_side}|{tokenizer.model_input_names}"
    return hashlib.sha256((text + extra).encode()).hexdigest()


def windows_key(split_hashes: dict[str, str], tokenizer, max_length: int, doc_stride: int) -> str:
    parts = [*(f"{k}={split_hashes[k]}" for k in sorted(split_hashes)),
             tokenizer_fingerprint(tokenizer), str(max_length), str(doc_stride), _CODE]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _build(splits: dict[str, list[dict]], tokenizer, max_length: int, doc_stride: int) -> dict:
    return {"train": data.build_train_features(splits["train"], tokenizer, max_length, doc_stride),
            **{name: data.build_eval_features(splits[name], tokenizer, max_length, doc_stride)
               for name in ("tune", "dev")}}


def _load(directory: Path) -> dict:
    from datasets import load_from_disk
    return {name: load_from_disk(str(directory / name)) for name in ("train", "tune", "dev")}


def _save(built: dict, directory: Path) -> None:
    """Written complete into a private folder, then renamed: a killed run leaves no half
    windows, and two workers making the same windows at once both end with one copy."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        for name, ds in built.items():
            ds.save_to_disk(str(tmp / name))
        try:
            tmp.rename(directory)
        except OSError:
            if not directory.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_windows(root: Path | None, splits: dict[str, list[dict]], split_hashes: dict[str, str],
                 tokenizer, max_length: int, doc_stride: int) -> Windows:
    """The windows of this data version: from memory, else from disk under `root`, else
    tokenised now (and saved under `root` when given)."""
    key = windows_key(split_hashes, tokenizer, max_length, doc_stride)
    memo = (str(root), key)
    if memo in _MEMO:
        return _MEMO[memo]
    directory = Path(root) / key if root is not None else None
    if directory is not None and directory.exists():
        built = _load(directory)
    else:
        built = _build(splits, tokenizer, max_length, doc_stride)
        if directory is not None:
            directory.parent.mkdir(parents=True, exist_ok=True)
            _save(built, directory)
            built = _load(directory)  # memory-mapped, as every later process sees them
    _MEMO[memo] = Windows(key=key, **built)
    return _MEMO[memo]


def forget() -> None:
    """Drop the in-process copies (benchmarks measuring a cold process)."""
    _MEMO.clear()
