"""`study bench --fixed-cost`: per-trial work that does not depend on the trial (windows,
teacher load and hash, cache key, tokenisation check) at SQuAD's size, as every trial did it
before and as it is done now (once per data version and process); into reports/bench.json
`fixed_cost`."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from study.bench.common import write_section
from study.config import Config
from study.fit import apply_runtime

PAPER_QUESTIONS = {"train": 74_459, "tune": 13_140, "dev": 10_570}  # SQuAD v1.1's 87,599 / 10,570


def _replicated(records: list[dict], n: int, tag: str) -> list[dict]:
    """n SQuAD-shaped questions made by repeating real ones under new ids."""
    return [{**records[i % len(records)], "id": f"{tag}{i}"} for i in range(n)]


def _bert_base_teacher(folder: Path) -> None:
    """A BERT-base-sized QA model (random weights; 440 MB of safetensors, as the paper's)."""
    from transformers import BertConfig, BertForQuestionAnswering

    from study.modeling import load_tokenizer, save_model
    save_model(BertForQuestionAnswering(BertConfig()), load_tokenizer("embedded"), folder)


def _per_trial_before(splits, student_tok, folder: Path, max_length: int, stride: int) -> dict:
    """What every trial did before the windows were kept: tokenise all three splits, load and
    hash the teacher, check tokenisation, hash every window for the cache key."""
    from study import data
    from study.modeling import load_qa_model, load_tokenizer
    from study.teacher_logits import _hash_files

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    feats = data.build_train_features(splits["train"], student_tok, max_length, stride)
    for name in ("tune", "dev"):
        data.build_eval_features(splits[name], student_tok, max_length, stride)
    t["windows"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_qa_model(str(folder), require_head=True)
    teacher_tok = load_tokenizer(str(folder))
    t["teacher_load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _hash_files(sorted(folder.glob("*.safetensors")))
    data.features_hash(feats)
    t["cache_key"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data.check_same_tokenization(teacher_tok, student_tok, splits["train"], max_length, stride,
                                 "teacher", "student")
    t["tokenisation_check"] = time.perf_counter() - t0
    return t


def _per_trial_after(splits, hashes, student_tok, folder: Path, root: Path, max_length: int,
                     stride: int) -> float:
    """The same work as a trial does it now (study.fit.data_windows, teacher_logits'
    memoised hash, the tokenisation check); the teacher itself is loaded only on a cache miss."""
    from study import data
    from study.modeling import load_tokenizer
    from study.teacher_logits import cache_key, weights_hash
    from study.windows import load_windows

    t0 = time.perf_counter()
    w = load_windows(root, splits, hashes, student_tok, max_length, stride)
    teacher_tok = load_tokenizer(str(folder))
    cache_key(weights_hash(folder, None), student_tok, max_length, stride, None, w.key)
    data.check_same_tokenization(teacher_tok, student_tok, splits["train"], max_length, stride,
                                 "teacher", "student")
    return time.perf_counter() - t0


def run(cfg: Config) -> dict:
    """Per-trial work that does not depend on the trial, at SQuAD's size (paper profile's
    windows), before (redone by every trial) and after (once per data version / process)."""
    from study import data, teacher_logits, windows
    from study.modeling import load_tokenizer

    apply_runtime(cfg)
    base = data.load_squad_file(data.EMBEDDED_DATA)
    splits = {k: _replicated(base, n, f"{k}-") for k, n in PAPER_QUESTIONS.items()}
    hashes = {k: data.split_hash(v) for k, v in splits.items()}
    student_tok = load_tokenizer("embedded", "distilbert")
    length, stride = 384, 128
    with tempfile.TemporaryDirectory() as tmp:
        folder, root = Path(tmp) / "teacher", Path(tmp) / "windows"
        _bert_base_teacher(folder)
        before = _per_trial_before(splits, student_tok, folder, length, stride)
        windows.forget()
        teacher_logits._WEIGHTS.clear()
        after = {"first_trial_of_the_data_version": _per_trial_after(
            splits, hashes, student_tok, folder, root, length, stride)}
        after["later_trial_same_process"] = _per_trial_after(
            splits, hashes, student_tok, folder, root, length, stride)
        windows.forget()  # a second worker, or the study resumed: windows and hash from disk
        teacher_logits._WEIGHTS.clear()
        after["first_trial_of_another_process"] = _per_trial_after(
            splits, hashes, student_tok, folder, root, length, stride)
        teacher_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    section = {
        "questions": PAPER_QUESTIONS, "max_length": length, "doc_stride": stride,
        "teacher_safetensors_mb": round(teacher_mb, 1),
        "before_seconds_every_trial": {k: round(v, 2) for k, v in before.items()},
        "before_total_seconds": round(sum(before.values()), 2),
        "after_seconds": {k: round(v, 3) for k, v in after.items()},
    }
    section = write_section(cfg, "fixed_cost", section)
    f = section
    print(f"fixed cost per trial at SQuAD size: before {f['before_total_seconds']} s every trial "
          f"({f['before_seconds_every_trial']}); after {f['after_seconds']}")
    return section

