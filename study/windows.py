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
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from study import data

# The code that turns records into windows is part of the key: changing it invalidates them.
_CODE = hashlib.sha256("".join(inspect.getsource(f) for f in (
    data._tokenize, data.train_features, data.eval_features, data.build_train_features,
    data.build_eval_features)).encode()).hexdigest()

_MEMO: dict[tuple[str, str], dict[str, Any]] = {}
SPLITS = ("train", "tune", "dev")
# Questions per tokenising process: below this, starting processes costs more than it saves
# (the embedded default's 1,190 questions are tokenised in this process, as before).
QUESTIONS_PER_PROCESS = 10_000


@dataclass(frozen=True)
class Windows:
    """The splits' windows: train with labels and feature_index, tune/dev with offsets; a
    split that was not asked for (a teacher that is only scored needs no train windows) is None."""
    key: str
    train: Any = None  # datasets.Dataset
    tune: Any = None
    dev: Any = None

    def eval_columns(self, split: str) -> dict[str, list]:
        """A tune/dev split as plain columns, the form the predictor answers from."""
        return getattr(self, split).to_dict()


def tokenizer_fingerprint(tokenizer) -> str:
    """Everything that decides token ids: the fast tokenizer's full pipeline, or its vocab."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Without the truncation/padding the last call left on it: tokenising sets them, and
        # a tokenizer that has already cut windows must name the same windows.
        state = {k: v for k, v in json.loads(backend.to_str()).items()
                 if k not in ("truncation", "padding")}
        text = json.dumps(state, sort_keys=True)
    else:
        text = repr(sorted(tokenizer.get_vocab().items()))
    extra = f"{type(tokenizer).__name__}|{tokenizer.padding_side}|{tokenizer.model_input_names}"
    return hashlib.sha256((text + extra).encode()).hexdigest()


def windows_key(split_hashes: dict[str, str], tokenizer, max_length: int, doc_stride: int) -> str:
    """Not keyed by the number of tokenising processes: they make the same windows."""
    parts = [*(f"{k}={split_hashes[k]}" for k in sorted(split_hashes)),
             tokenizer_fingerprint(tokenizer), str(max_length), str(doc_stride), _CODE]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def tokenising_processes(n_questions: int) -> int | None:
    """The cores this process may use, one per QUESTIONS_PER_PROCESS questions; None: one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = min(cores or 1, n_questions // QUESTIONS_PER_PROCESS)
    return n if n > 1 else None


def _build(name: str, records: list[dict], tokenizer, max_length: int, doc_stride: int,
           num_proc: int | None):
    build = data.build_train_features if name == "train" else data.build_eval_features
    return build(records, tokenizer, max_length, doc_stride, num_proc=num_proc)


def _save(ds, directory: Path) -> None:
    """Written complete into a private folder, then renamed: a killed run leaves no half
    windows, and two workers making the same windows at once both end with one copy."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        ds.save_to_disk(str(tmp))
        try:
            tmp.rename(directory)
        except OSError:
            if not directory.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_windows(root: Path | None, splits: dict[str, list[dict]], split_hashes: dict[str, str],
                 tokenizer, max_length: int, doc_stride: int, names=SPLITS,
                 num_proc: int | None = None) -> Windows:
    """The windows of this data version, for the splits `names`: from memory, else from disk
    under `root`, else tokenised now (by `num_proc` processes, default: as many as the
    split's size and the cores allow) and saved under `root` when given."""
    from datasets import load_from_disk

    key = windows_key(split_hashes, tokenizer, max_length, doc_stride)
    held = _MEMO.setdefault((str(root), key), {})
    directory = Path(root) / key if root is not None else None
    for name in names:
        if name in held:
            continue
        folder = directory / name if directory is not None else None
        if folder is None or not folder.exists():
            records = splits[name]
            built = _build(name, records, tokenizer, max_length, doc_stride,
                           num_proc or tokenising_processes(len(records)))
            if folder is None:
                held[name] = built
                continue
            folder.parent.mkdir(parents=True, exist_ok=True)
            _save(built, folder)
        held[name] = load_from_disk(str(folder))  # memory-mapped, as every later process sees them
    return Windows(key=key, **{name: held[name] for name in names})


def forget() -> None:
    """Drop the in-process copies (benchmarks measuring a cold process)."""
    _MEMO.clear()
    _PADDED.clear()


# --------------------------------------------------------------------------- training batches
# The value each padded column takes beyond a window's end (as tokenizer.pad writes it).
_PAD = {"input_ids": None, "attention_mask": 0, "token_type_ids": None, "special_tokens_mask": 1}
_PADDED: dict[tuple, PaddedWindows] = {}


class PaddedWindows(torch.utils.data.Dataset):
    """Train windows as padded int32 arrays, made once per process (and per column set): a
    training batch is a row gather and a trim to its longest window, the same tensors that
    DataCollatorWithPadding makes from Arrow rows at ~27 times the cost (bench.json
    `input_pipeline`: 6,205 vs 226 batches/s; ~58 ms a batch of 32 x 384 on one busy core,
    where a GPU step takes 21 ms). NumPy does the gather: a
    small torch op spends more on its thread pool than on the copy when the cores are busy."""

    def __init__(self, columns: dict[str, np.ndarray], lengths: np.ndarray):
        self.columns, self.lengths = columns, lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """One window, unpadded (LengthGroupedSampler reads its length from it)."""
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        n = self.lengths[i]
        return {k: torch.from_numpy(np.asarray(v[i, :n] if v.ndim == 2 else v[i], np.int64))
                for k, v in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> list[WindowRows]:
        # One object, not a list of rows: the DataLoader hands it to the collator whole, and
        # the Trainer's column filter passes anything that is not a dict through untouched.
        return [self.rows(indices)]

    def rows(self, indices) -> WindowRows:
        return WindowRows(self, np.asarray(indices, dtype=np.int64))


@dataclass(frozen=True)
class WindowRows:
    data: PaddedWindows
    indices: np.ndarray

    def collate(self) -> dict[str, torch.Tensor]:
        longest = self.data.lengths[self.indices].max()
        return {k: torch.from_numpy((v[self.indices, :longest] if v.ndim == 2
                                     else v[self.indices]).astype(np.int64))
                for k, v in self.data.columns.items()}


class PadToLongest:
    """The training collator: batches of PaddedWindows are gathered and trimmed; lists of rows
    (any other dataset) go to DataCollatorWithPadding, which gives the same tensors."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorWithPadding

        self.rows = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list) -> dict[str, torch.Tensor]:
        if len(features) == 1 and isinstance(features[0], WindowRows):
            return features[0].collate()
        return self.rows(features)


def padded_windows(windows: Windows, tokenizer, columns: list[str] | None = None) -> PaddedWindows:
    """The train windows' `columns` (default: all) as PaddedWindows, once per process."""
    memo = (windows.key, tuple(columns or windows.train.column_names), tokenizer.pad_token_id,
            tokenizer.pad_token_type_id, tokenizer.padding_side)
    if memo not in _PADDED:
        _PADDED[memo] = padded_rows(windows.train, tokenizer, columns)
    return _PADDED[memo]


def padded_rows(ds, tokenizer, columns: list[str] | None = None) -> PaddedWindows:
    """The dataset's `columns` (default: all) padded as tokenizer.pad pads them (right side
    only: the side every tokenizer of this project uses)."""
    table = ds.select_columns(list(columns or ds.column_names)).with_format("arrow")[:]
    return _pad_table(table, _pads(tokenizer))


def longest_first(input_ids) -> np.ndarray:
    """The order to answer windows in: longest first (stable), so that a batch of windows pads
    to about their own length rather than to the longest of whichever windows sit beside
    them in the split. On the default profile that is 17% fewer tokens for `tune` and 25%
    for `dev`. A window's logits are the same numbers up to the last bits whatever its batch
    (the padded length changes the order of some sums), and the same for the same order."""
    lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64)
    return np.argsort(-lengths, kind="stable")


def pad_batch(rows: dict[str, list[list[int]]], tokenizer) -> dict[str, torch.Tensor]:
    """A batch of token columns (lists of ids) padded as DataCollatorWithPadding pads them,
    without its per-row conversions (the predictor's path: windows made on the fly)."""
    pads = _pads(tokenizer)
    out = {}
    for name, col in rows.items():
        if pads.get(name) is None:
            raise ValueError(f"no padding value for the column {name!r}")
        a = np.full((len(col), max(map(len, col), default=0)), pads[name], dtype=np.int64)
        for j, ids in enumerate(col):
            a[j, :len(ids)] = ids
        out[name] = torch.from_numpy(a)
    return out


def _pads(tokenizer) -> dict[str, int | None]:
    """Each padded column's value past a window's end, as tokenizer.pad writes it (right side
    only: the side every tokenizer of this project uses)."""
    if tokenizer.padding_side != "right":
        raise ValueError(f"padded training windows pad on the right, not "
                         f"{tokenizer.padding_side!r}")
    return {**_PAD, "input_ids": tokenizer.pad_token_id,
            "token_type_ids": tokenizer.pad_token_type_id}


def _pad_table(table, pads: dict[str, int | None]) -> PaddedWindows:
    import pyarrow as pa
    import pyarrow.compute as pc

    columns, lengths = {}, None
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_integer(col.type):  # labels, feature_index: int64, as the collator makes them
            columns[name] = col.to_numpy(zero_copy_only=False).astype(np.int64)
            continue
        if not pa.types.is_list(col.type) or not pa.types.is_integer(col.type.value_type):
            raise ValueError(f"the train windows' column {name!r} is {col.type}, not integers")
        if pads.get(name) is None:
            raise ValueError(f"no padding value for the train windows' column {name!r}")
        n = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
        if lengths is not None and not np.array_equal(n, lengths):
            raise ValueError(f"column {name!r} has other lengths than the windows")
        lengths = n
        out = np.full((len(n), int(n.max(initial=0))), pads[name], dtype=np.int32)
        out[np.arange(out.shape[1]) < n[:, None]] = col.flatten().to_numpy(zero_copy_only=False)
        columns[name] = out
    if lengths is None:
        raise ValueError("the train windows have no token column")
    return PaddedWindows(columns, lengths)
