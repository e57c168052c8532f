"""Windows are made once per data version: in memory for the process, on disk for the next one;
and the Trainer's own warm-up counts the steps it really trains."""

from __future__ import annotations

import math

import pytest

from study import data, windows
from study.config import TrainSpec
from study.data import build_eval_features, build_train_features

MAX_LEN, STRIDE = 128, 64


@pytest.fixture
def splits(xquad_records):
    return {"train": xquad_records[:16], "tune": xquad_records[600:606],
            "dev": xquad_records[900:906]}


HASHES = {"train": "a" * 64, "tune": "b" * 64, "dev": "c" * 64}


@pytest.fixture(autouse=True)
def _cold():
    windows.forget()
    yield
    windows.forget()


def _no_tokenising(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("windows were tokenised again")
    monkeypatch.setattr(data, "build_train_features", refuse)
    monkeypatch.setattr(data, "build_eval_features", refuse)


def test_windows_equal_freshly_made_ones(tmp_path, splits, tokenizer):
    w = windows.load_windows(tmp_path, splits, HASHES, tokenizer, MAX_LEN, STRIDE)
    assert w.train.to_dict() == build_train_features(splits["train"], tokenizer, MAX_LEN,
                                                      STRIDE).to_dict()
    for name in ("tune", "dev"):
        fresh = build_eval_features(splits[name], tokenizer, MAX_LEN, STRIDE).to_dict()
        assert w.eval_columns(name) == fresh
    assert len(w.train) > len(splits["train"])  # long contexts give several windows


def test_second_use_in_a_process_and_a_new_process_do_not_tokenise(tmp_path, splits, tokenizer,
                                                                    monkeypatch):
    first = windows.load_windows(tmp_path, splits, HASHES, tokenizer, MAX_LEN, STRIDE)
    _no_tokenising(monkeypatch)
    assert windows.load_windows(tmp_path, splits, HASHES, tokenizer, MAX_LEN, STRIDE) == first
    windows.forget()  # what a second worker or a resumed study sees: only the disk
    again = windows.load_windows(tmp_path, splits, HASHES, tokenizer, MAX_LEN, STRIDE)
    assert again is not first and again.key == first.key
    assert again.train.to_dict() == first.train.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == [first.key]  # no scratch folder left


def test_only_the_splits_asked_for_are_tokenised(tmp_path, splits, tokenizer, monkeypatch):
    """`study teacher` with a given checkpoint scores tune and dev: no train windows."""
    made = []
    real = data.build_train_features
    monkeypatch.setattr(data, "build_train_features", lambda *a, **k: made.append(1) or real(*a, **k))
    w = windows.load_windows(tmp_path, splits, HASHES, tokenizer, MAX_LEN, STRIDE, ("tune", "dev"))
    assert w.train is None and w.tune is not None and w.dev is not None and not made
    assert sorted(p.name for p in (tmp_path / w.key).iterdir()) == ["dev", "tune"]
    later = windows.load_windows(tmp_path, splits, HASHES, tokenizer, MAX_LEN, STRIDE)
    assert made == [1] and later.key == w.key and later.train is not None
    assert later.tune is w.tune  # what was loaded stays


def test_tokenising_processes_make_the_same_windows_under_the_same_key(tmp_path, splits,
                                                                        tokenizer):
    one = windows.load_windows(tmp_path / "1", splits, HASHES, tokenizer, MAX_LEN, STRIDE,
                               num_proc=1)
    windows.forget()
    two = windows.load_windows(tmp_path / "2", splits, HASHES, tokenizer, MAX_LEN, STRIDE,
                               num_proc=2)
    assert one.key == two.key
    for name in ("train", "tune", "dev"):
        assert getattr(one, name).to_dict() == getattr(two, name).to_dict(), name
    assert windows.tokenising_processes(1_190) is None  # the embedded data: this process


def test_key_follows_everything_that_changes_windows(splits, tokenizer, distil_tokenizer):
    from study.modeling import load_tokenizer

    key = windows.windows_key(HASHES, tokenizer, MAX_LEN, STRIDE)
    # A fresh tokenizer names the same windows as one that has already tokenised.
    assert key == windows.windows_key(HASHES, load_tokenizer("embedded"), MAX_LEN, STRIDE)
    assert key == windows.windows_key(dict(HASHES), tokenizer, MAX_LEN, STRIDE)
    others = {
        windows.windows_key({**HASHES, "dev": "d" * 64}, tokenizer, MAX_LEN, STRIDE),
        windows.windows_key(HASHES, tokenizer, MAX_LEN + 64, STRIDE),
        windows.windows_key(HASHES, tokenizer, MAX_LEN, STRIDE + 32),
        # Same vocabulary, but the DistilBERT tokenizer emits no token_type_ids.
        windows.windows_key(HASHES, distil_tokenizer, MAX_LEN, STRIDE),
    }
    assert key not in others and len(others) == 4


@pytest.mark.parametrize("max_steps", [-1, 7])
def test_warmup_is_a_share_of_the_steps_trained(tmp_path, max_steps):
    from study.config import load_config
    from study.fit import training_arguments

    cfg = load_config(None, "smoke")
    spec = TrainSpec(epochs=3, batch_size=8, warmup_ratio=0.25, max_steps=max_steps)
    args = training_arguments(cfg, spec, tmp_path, n_features=80, seed=1, has_eval=False,
                              distilling=False)
    total = max_steps if max_steps > 0 else 3 * math.ceil(80 / 8)
    assert args.get_warmup_steps(total) == math.ceil(0.25 * total)


def test_fixed_cost_bench_tokenises_once_per_data_version(tmp_path, monkeypatch, tokenizer):
    """The benchmark's `after` path: the first trial makes the windows, a later trial in the same
    process and a trial of another process reuse them (counted, not timed)."""
    from conftest import make_tiny_bert_qa

    from study.bench import fixed_cost
    from study.config import load_config
    from study.modeling import save_model

    calls = []
    real = data.build_train_features
    monkeypatch.setattr(data, "build_train_features",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(fixed_cost, "PAPER_QUESTIONS", {"train": 30, "tune": 8, "dev": 8})
    monkeypatch.setattr(fixed_cost, "_bert_base_teacher", lambda folder: save_model(
        make_tiny_bert_qa(tokenizer.vocab_size), tokenizer, folder))
    cfg = load_config(None, "smoke", [f"runtime.reports={tmp_path}"])
    doc = fixed_cost.run(cfg)
    assert len(calls) == 2  # once for `before`, once for the first trial `after`
    assert set(doc["after_seconds"]) == {"first_trial_of_the_data_version",
                                         "later_trial_same_process",
                                         "first_trial_of_another_process"}
    assert set(doc["before_seconds_every_trial"]) == {"windows", "teacher_load", "cache_key",
                                                      "tokenisation_check"}
    assert (tmp_path / "bench.json").exists()


# --------------------------------------------------------------------------- training batches
def _batches(trainer) -> list[dict]:
    import torch

    torch.manual_seed(0)  # the sampler draws from the global generator when none is seeded
    return [{k: v.clone() for k, v in b.items()} for b in trainer.get_train_dataloader()]


@pytest.mark.parametrize("distilling", [False, True])
@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize("tok", ["tokenizer", "distil_tokenizer"])
def test_training_batches_are_the_arrow_rows_padded_by_the_collator(
        tmp_path, splits, xquad_records, request, tok, distilling, group_by_length):
    """make_trainer's batches (padded tensors, gathered and trimmed) are, batch for batch, the
    tensors the Trainer made from the Arrow rows with DataCollatorWithPadding: same keys,
    dtypes and values, so training on them is the same to the digit."""
    import torch
    from conftest import make_tiny_bert_qa, make_tiny_distilbert_qa
    from transformers import DataCollatorWithPadding

    from study.config import DistillConfig, load_config
    from study.fit import make_trainer, training_arguments
    from study.trainer import DistillationTrainer, QuestionAnsweringTrainer

    tokenizer = request.getfixturevalue(tok)
    make = make_tiny_bert_qa if tok == "tokenizer" else make_tiny_distilbert_qa
    splits = {**splits, "train": xquad_records[:60]}  # several batches, lengths that differ
    w = windows.load_windows(tmp_path / "w", splits, HASHES, tokenizer, MAX_LEN, STRIDE)
    cfg = load_config(None, "smoke")
    spec = TrainSpec(epochs=1, batch_size=8, group_by_length=group_by_length)
    distill = DistillConfig(teacher_logits="live") if distilling else None
    teacher = (lambda: make(len(tokenizer), seed=5)) if distilling else None
    new, _ = make_trainer(cfg, model=make(len(tokenizer)), tokenizer=tokenizer, spec=spec,
                          splits=splits, windows=w, out_dir=tmp_path / "new", seed=3,
                          distill=distill, teacher=teacher, teacher_dir=None)
    args = training_arguments(cfg, spec, tmp_path / "old", len(w.train), 3, has_eval=False,
                              distilling=distilling)
    cls = DistillationTrainer if distilling else QuestionAnsweringTrainer
    extra = {"teacher": teacher()} if distilling else {}
    old = cls(model=make(len(tokenizer)), args=args, train_dataset=w.train,
              data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
              **extra)
    got, want = _batches(new), _batches(old)
    assert len(got) == len(want) == math.ceil(len(w.train) / 8)
    assert len({b["input_ids"].shape[1] for b in got}) > 1  # trimmed per batch, not to the max
    for g, e in zip(got, want):
        assert g.keys() == e.keys()
        for k in e:
            assert g[k].dtype == e[k].dtype and torch.equal(g[k], e[k]), k
    assert ("feature_index" in got[0]) == distilling  # the distiller's cache lookup needs it


def test_padded_windows_refuse_what_they_cannot_pad(tmp_path, splits, tokenizer):
    w = windows.load_windows(tmp_path, splits, HASHES, tokenizer, MAX_LEN, STRIDE)
    odd = windows.Windows(key="odd", train=w.train.add_column(
        "offsets", [[1, 2]] * len(w.train)))
    with pytest.raises(ValueError, match="no padding value for the train windows' column 'offsets'"):
        windows.padded_windows(odd, tokenizer)
    tokenizer.padding_side = "left"
    try:
        with pytest.raises(ValueError, match="pad on the right, not 'left'"):
            windows.padded_windows(w, tokenizer)
    finally:
        tokenizer.padding_side = "right"


def test_input_pipeline_bench_times_both_collation_paths(tmp_path):
    from study.bench import input_pipeline
    from study.config import load_config
    from study.files import read_json

    cfg = load_config(None, "smoke", [f"runtime.reports={tmp_path}"])
    input_pipeline.run(cfg, batches=12, batch_size=8, length=128)
    doc = read_json(tmp_path / "bench.json", "benchmark file", "")["input_pipeline"]
    assert set(doc["paths"]) == {"padded_windows", "arrow_rows"}
    assert all(p["batches_per_second"] > 0 for p in doc["paths"].values())
    assert doc["batches_per_second"] == doc["paths"]["padded_windows"]["batches_per_second"]
    assert doc["target_met"] == (doc["batches_per_second"] >= 480)
    assert doc["load_average_1min"] >= 0
    assert len(doc["environment"]["load_average"]) == 3  # the shared writer's environment


@pytest.mark.parametrize("tok", ["tokenizer", "distil_tokenizer"])
def test_pad_batch_is_what_the_collator_makes(splits, request, tok):
    """The predictor's batches: the same tensors as DataCollatorWithPadding's, ragged rows."""
    import torch
    from transformers import DataCollatorWithPadding

    tokenizer = request.getfixturevalue(tok)
    feats = build_eval_features(splits["dev"], tokenizer, MAX_LEN, STRIDE).to_dict()
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in feats]
    assert len({len(ids) for ids in feats["input_ids"]}) > 1
    got = windows.pad_batch({c: feats[c] for c in cols}, tokenizer)
    want = DataCollatorWithPadding(tokenizer)(
        [{c: feats[c][j] for c in cols} for j in range(len(feats["input_ids"]))])
    assert got.keys() == set(want.keys())
    for k in got:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_longest_first_orders_windows_by_length_stably():
    from study.windows import longest_first

    ids = [[1] * 3, [1] * 5, [1] * 3, [1] * 7, [1] * 5]
    assert longest_first(ids).tolist() == [3, 1, 4, 0, 2]  # ties keep the split's order
    assert longest_first([]).tolist() == []
