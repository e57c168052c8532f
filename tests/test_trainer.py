"""DistillationTrainer / QuestionAnsweringTrainer with tiny models on real XQuAD windows."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
import transformers
from conftest import make_tiny_bert_qa, make_tiny_distilbert_qa
from transformers import DataCollatorWithPadding, TrainingArguments

from study.teacher_logits import TeacherLogitCache, build_or_load
from study.data import build_eval_features, build_train_features
from study.loss import distillation_loss
from study.metric import squad_metrics
from study.postprocess import postprocess_predictions
from study.trainer import DistillationTrainer, QuestionAnsweringTrainer

MAX_LEN, STRIDE = 128, 64


@pytest.fixture(scope="module")
def records(xquad_records):
    # Two articles' worth of questions, not the first ones only.
    return xquad_records[:12] + xquad_records[600:608]


@pytest.fixture(scope="module")
def train_feats(records, distil_tokenizer):
    feats = build_train_features(records, distil_tokenizer, MAX_LEN, STRIDE)
    # The student's tokenizer still yields segment ids: the BERT teacher needs them.
    assert "token_type_ids" in feats.column_names
    return feats


@pytest.fixture
def collator(distil_tokenizer):
    return DataCollatorWithPadding(distil_tokenizer)


@pytest.fixture
def teacher(tokenizer):
    return make_tiny_bert_qa(len(tokenizer), seed=11)


@pytest.fixture
def student(tokenizer):
    return make_tiny_distilbert_qa(len(tokenizer), seed=12)


def args(tmp_path, steps=3, distilling=True, **kw):
    kw = {"logging_steps": 1, **kw}
    return TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=4,
        learning_rate=1e-3, seed=7, data_seed=7, report_to="none", use_cpu=True,
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=not distilling, **kw)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def collated(train_feats, collator, rows):
    return collator([train_feats[i] for i in rows])


def test_distillation_trains_student_not_teacher(tmp_path, teacher, student, train_feats, collator,
                                                distil_tokenizer):
    teacher_before, student_before = state(teacher), state(student)
    trainer = DistillationTrainer(
        model=student, args=args(tmp_path), train_dataset=train_feats, data_collator=collator,
        processing_class=distil_tokenizer, teacher=teacher, temperature=2.0, alpha_ce=0.5,
        alpha_squad=0.5)
    assert not teacher.training
    trainer.train()
    assert trainer.state.global_step == 3
    assert not trainer.teacher.training, "the teacher must stay in eval mode"
    assert all(not p.requires_grad for p in teacher.parameters())
    after = state(teacher)
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)
    changed = [k for k, v in state(student).items() if not torch.equal(v, student_before[k])]
    assert "qa_outputs.weight" in changed
    assert any(k.startswith("distilbert.transformer.layer.0.") for k in changed)
    # Both loss parts were logged at every (logging) step, and the KD part is a real signal.
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 3 and all({"loss_ce", "loss_kd"} <= set(e) for e in logged)
    assert all(e["loss_kd"] > 0 for e in logged)


def test_distillation_without_teacher_refused(tmp_path, student, train_feats, collator):
    with pytest.raises(ValueError, match="teacher"):
        DistillationTrainer(model=student, args=args(tmp_path), train_dataset=train_feats,
                            data_collator=collator, alpha_ce=0.5, alpha_squad=0.5)


def test_cached_teacher_loss_equals_live_teacher_loss(tmp_path, teacher, student, train_feats,
                                                     collator, distil_tokenizer):
    teacher.eval()
    cache = build_or_load(teacher, None, distil_tokenizer, train_feats,
                          root=tmp_path / "cache", max_length=MAX_LEN, doc_stride=STRIDE,
                          batch_size=8, device="cpu", dtype="float32")
    assert cache.start.shape == (len(train_feats), MAX_LEN)
    assert cache.meta["windows"] == len(train_feats)
    # A second call finds it on disk.
    again = build_or_load(teacher, None, distil_tokenizer, train_feats,
                          root=tmp_path / "cache", max_length=MAX_LEN, doc_stride=STRIDE,
                          batch_size=8, device="cpu", dtype="float32")
    assert again.directory == cache.directory
    assert len(list((tmp_path / "cache").iterdir())) == 1

    common = {"model": student, "args": args(tmp_path), "train_dataset": train_feats,
              "data_collator": collator, "processing_class": distil_tokenizer,
              "temperature": 3.0, "alpha_ce": 0.7, "alpha_squad": 0.3}
    cached = DistillationTrainer(**common, teacher_logits=cache)
    live = DistillationTrainer(**common, teacher=teacher)
    student.eval()
    # Rows of different lengths from different cache batches, so the batch pads
    # differently from how the cache was computed.
    lengths = [len(x) for x in train_feats["input_ids"]]
    rows = [lengths.index(min(lengths)), lengths.index(max(lengths)), 9, 3, len(train_feats) - 1]
    batch = collated(train_feats, collator, rows)
    assert min(lengths) < max(lengths)  # the short row is padded in this batch
    with torch.no_grad():
        loss_cached = cached.compute_loss(student, batch)
        loss_live = live.compute_loss(student, batch)
        # The KD term is what differs between the two paths: make sure it is in the loss.
        plain = DistillationTrainer(**{**common, "alpha_ce": 0.0}).compute_loss(student, batch)
    assert loss_cached.item() == pytest.approx(loss_live.item(), abs=1e-5)
    assert abs(loss_cached.item() - plain.item()) > 1e-3


def test_cache_rows_hold_the_teachers_logits(tmp_path, teacher, train_feats, collator,
                                             distil_tokenizer):
    teacher.eval()
    cache = build_or_load(teacher, None, distil_tokenizer, train_feats,
                          root=tmp_path, max_length=MAX_LEN, doc_stride=STRIDE, batch_size=5,
                          device="cpu", dtype="float32")
    reread = TeacherLogitCache(cache.directory)
    i = len(train_feats) // 2
    row = collated(train_feats, collator, [i])
    with torch.no_grad():
        out = teacher(input_ids=row["input_ids"], attention_mask=row["attention_mask"],
                      token_type_ids=row["token_type_ids"])
    n = row["input_ids"].shape[1]
    s, e = reread.lookup(torch.tensor([i]), n, "cpu")
    assert torch.allclose(s, out.start_logits, atol=1e-5)
    assert torch.allclose(e, out.end_logits, atol=1e-5)


def test_alpha_ce_zero_is_plain_fine_tuning(tmp_path, student, train_feats, collator,
                                            distil_tokenizer):
    init = copy.deepcopy(student)
    before = state(student)
    transformers.set_seed(7)
    distill = DistillationTrainer(
        model=student, args=args(tmp_path / "d", steps=1), train_dataset=train_feats,
        data_collator=collator, processing_class=distil_tokenizer, teacher=None,
        temperature=2.0, alpha_ce=0.0, alpha_squad=1.0)
    distill.train()
    transformers.set_seed(7)
    plain = QuestionAnsweringTrainer(
        model=init, args=args(tmp_path / "p", steps=1, distilling=False),
        train_dataset=train_feats, data_collator=collator, processing_class=distil_tokenizer)
    plain.train()
    a, b = state(distill.model), state(plain.model)
    assert any(not torch.equal(a[k], before[k]) for k in a), "one step must move the weights"
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert distill.state.log_history[0]["loss"] == pytest.approx(
        plain.state.log_history[0]["loss"], rel=1e-5)


def test_qa_trainer_evaluate_returns_squad_scores(tmp_path, student, records, distil_tokenizer,
                                                  collator):
    feats = build_eval_features(records, distil_tokenizer, MAX_LEN, STRIDE)

    def post(examples, features, start_logits, end_logits):
        return postprocess_predictions(examples, features, start_logits, end_logits,
                                       n_best=5, max_answer_length=15)

    trainer = QuestionAnsweringTrainer(
        model=student, args=args(tmp_path, distilling=False, per_device_eval_batch_size=8),
        eval_dataset=feats, eval_examples=records, data_collator=collator,
        processing_class=distil_tokenizer, post_process_function=post)
    metrics = trainer.evaluate()
    assert {"eval_exact_match", "eval_f1"} <= set(metrics)
    assert 0 <= metrics["eval_exact_match"] <= metrics["eval_f1"] <= 100
    preds = trainer.last_predictions
    assert set(preds) == {r["id"] for r in records}
    assert all(p and p in r["context"] for r, p in zip(records, (preds[r["id"]] for r in records)))
    expected = squad_metrics(preds, {r["id"]: r["answers"]["text"] for r in records})
    assert metrics["eval_f1"] == pytest.approx(expected["f1"])
    assert metrics["eval_exact_match"] == pytest.approx(expected["exact_match"])
    texts, test_metrics = trainer.predict(feats, records, metric_key_prefix="dev")
    assert texts == preds and test_metrics["dev_f1"] == pytest.approx(metrics["eval_f1"])


def test_trainer_loss_is_the_pure_loss(tmp_path, teacher, student, train_feats, collator,
                                       distil_tokenizer):
    trainer = DistillationTrainer(
        model=student, args=args(tmp_path), train_dataset=train_feats, data_collator=collator,
        processing_class=distil_tokenizer, teacher=teacher, temperature=2.5, alpha_ce=0.4,
        alpha_squad=0.9)
    batch = collated(train_feats, collator, [0, 1, 2])
    student.eval()
    teacher.eval()
    with torch.no_grad():
        got = trainer.compute_loss(student, batch)
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
        want = distillation_loss(s.start_logits, s.end_logits, batch["start_positions"],
                                 batch["end_positions"], t.start_logits, t.end_logits,
                                 temperature=2.5, alpha_ce=0.4, alpha_squad=0.9,
                                 attention_mask=batch["attention_mask"]).loss
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_evaluation_keeps_feature_order_when_training_groups_by_length(tmp_path, tiny_bert_qa, tokenizer):
    """Regression: group_by_length once reordered eval windows, scrambling every answer."""
    from transformers import DataCollatorWithPadding, TrainingArguments

    from study.data import EMBEDDED_DATA, build_eval_features, load_squad_file
    from study.trainer import QuestionAnsweringTrainer
    from study.fit import group_by_length_args

    records = load_squad_file(EMBEDDED_DATA)[:24]
    feats = build_eval_features(records, tokenizer, 128, 64)
    outs = []
    for grouped in (False, True):
        args = TrainingArguments(output_dir=str(tmp_path / str(grouped)), report_to="none",
                                 use_cpu=True, per_device_eval_batch_size=4,
                                 **(group_by_length_args() if grouped else {}))
        trainer = QuestionAnsweringTrainer(model=tiny_bert_qa, args=args,
                                           data_collator=DataCollatorWithPadding(tokenizer))
        assert isinstance(trainer._get_eval_sampler(feats), torch.utils.data.SequentialSampler)
        loader = trainer.get_eval_dataloader(feats.select_columns(["input_ids", "attention_mask"]))
        outs.append(torch.cat([b["input_ids"][:, 0:8] for b in loader]))
    assert torch.equal(outs[0], outs[1])
    first = torch.tensor([ids[:8] for ids in feats["input_ids"]])
    assert torch.equal(outs[1], first)


def test_cache_built_by_two_workers_at_once_is_used_not_broken(tmp_path, teacher, train_feats,
                                                               collator, distil_tokenizer,
                                                               monkeypatch):
    """Two search workers may build the same cache at once: the one that finishes second
    keeps the first one's cache (same key, same logits) instead of failing its trial."""
    import study.teacher_logits as cache_mod

    teacher.eval()
    kw = dict(root=tmp_path, max_length=MAX_LEN, doc_stride=STRIDE, batch_size=8,
              device="cpu", dtype="float32")
    real = cache_mod.compute_logits
    other = {}

    def rival_finishes_first(*a, **k):
        monkeypatch.setattr(cache_mod, "compute_logits", real)
        other["cache"] = build_or_load(teacher, None, distil_tokenizer, train_feats, **kw)
        return real(*a, **k)

    monkeypatch.setattr(cache_mod, "compute_logits", rival_finishes_first)
    mine = build_or_load(teacher, None, distil_tokenizer, train_feats, **kw)
    assert mine.directory == other["cache"].directory
    assert np.array_equal(np.asarray(mine.start), np.asarray(other["cache"].start))
    assert [p.name for p in tmp_path.iterdir()] == [mine.directory.name]  # no scratch left


# Every way a tensor's value reaches Python: each one waits for the device (a host sync).
HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


class HostReads:
    """Counts host reads of tensors that the project's code (study.*) makes inside
    `compute_loss`, per step. (transformers' own reads inside the model's forward, such as
    its SDPA all-ones-mask check, are the bare loop's too and are not the project's.)"""

    def __init__(self, monkeypatch, trainer):
        self.inside, self.per_call, self.floats = False, [], 0
        for name in HOST_READS:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(real))
        real_loss = trainer.compute_loss

        def compute_loss(*a, **k):
            self.per_call.append(0)
            self.inside = True
            try:
                return real_loss(*a, **k)
            finally:
                self.inside = False
        monkeypatch.setattr(trainer, "compute_loss", compute_loss)

    def _counted(self, real):
        def read(tensor, *a, **k):
            if self.inside and sys._getframe(1).f_globals.get("__name__", "").startswith("study"):
                self.per_call[-1] += 1
                self.floats += tensor.is_floating_point()  # a loss (or logit) value
            return real(tensor, *a, **k)
        return read


@pytest.mark.parametrize("on_device", [False, True], ids=["memmap", "cache-on-device"])
def test_training_step_reads_no_loss_value_between_logging_steps(
        tmp_path, monkeypatch, teacher, student, train_feats, collator, distil_tokenizer,
        on_device):
    """nanoGPT's rule: nothing is read off the device inside a step; the CE/KD parts are summed
    there and read when the Trainer logs (here once, after 4 steps)."""
    teacher.eval()
    cache = build_or_load(teacher, None, distil_tokenizer, train_feats,
                          root=tmp_path / "cache", max_length=MAX_LEN, doc_stride=STRIDE,
                          batch_size=8, device="cpu", dtype="float16")
    if on_device:
        cache.to_device("cpu")
    trainer = DistillationTrainer(
        model=student, args=args(tmp_path, steps=4, logging_steps=4),
        train_dataset=train_feats, data_collator=collator, processing_class=distil_tokenizer,
        teacher_logits=cache, temperature=2.0, alpha_ce=0.5, alpha_squad=0.5)
    reads = HostReads(monkeypatch, trainer)
    trainer.train()
    assert len(reads.per_call) == 4
    assert reads.floats == 0, "a loss value was read off the device inside a step"
    # The memory-mapped cache (the CPU path) reads its row indices on the host, a no-op on
    # the CPU; the cache on the device reads nothing at all.
    if on_device:
        assert reads.per_call == [0] * 4
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 1 and logged[0]["loss_kd"] > 0 and logged[0]["loss_ce"] > 0


def test_loss_parts_log_the_mean_of_each_steps_value(tmp_path, teacher, student, train_feats,
                                                     collator, distil_tokenizer):
    """The logged CE/KD parts are the same numbers as reading each step's part as a Python
    float and averaging them (what the trainer did before), to the last digit."""
    from study.trainer import LossParts

    values = [torch.tensor(v, dtype=torch.float32) for v in (0.1, 1 / 3, 2.7182817, 1e-7, 5.5)]
    parts = LossParts(("ce", "kd"))
    for v in values:
        parts.add(ce=v, kd=2 * v)
    means = parts.means()
    assert means["ce"] == sum(float(v) for v in values) / len(values)
    assert means["kd"] == sum(float(2 * v) for v in values) / len(values)
    assert parts.means() == {}  # read once: a new interval starts


def test_cache_on_device_gathers_the_same_rows_as_the_memory_mapped_cache(
        tmp_path, teacher, train_feats, collator, distil_tokenizer):
    teacher.eval()
    cache = build_or_load(teacher, None, distil_tokenizer, train_feats,
                          root=tmp_path, max_length=MAX_LEN, doc_stride=STRIDE, batch_size=8,
                          device="cpu", dtype="float16")
    assert cache.place("cpu").resident is None  # on the CPU the memmap is already in memory
    resident = TeacherLogitCache(cache.directory).to_device("cpu")
    assert resident.resident[0].dtype == torch.float16
    index = torch.tensor([len(train_feats) - 1, 0, 5, 5, 2])
    for seq_len in (MAX_LEN, 37):
        for a, b in zip(cache.lookup(index, seq_len, "cpu"), resident.lookup(index, seq_len, "cpu")):
            assert a.dtype == b.dtype == torch.float32 and a.shape == (5, seq_len)
            assert torch.equal(a, b)


def test_logits_made_in_reduced_precision_get_their_own_cache_key(distil_tokenizer):
    from study.teacher_logits import cache_key

    full = cache_key("w", distil_tokenizer, 128, 64, None, "windows")
    assert cache_key("w", distil_tokenizer, 128, 64, None, "windows", "no") == full
    assert cache_key("w", distil_tokenizer, 128, 64, None, "windows", "bf16") != full


def test_final_evaluation_reuses_only_an_evaluation_of_the_last_step():
    """fit scores `tune` from the Trainer's answers only when its last evaluation was of the
    final model (tests/test_qa.py: evaluation answers exactly as the predictor)."""
    from types import SimpleNamespace

    from study.fit import final_evaluation

    def trainer(evals, last_step, answers=None):
        log = [{"step": s, "eval_f1": 1.0} for s in evals] + [{"step": last_step, "loss": 0.5}]
        return SimpleNamespace(state=SimpleNamespace(log_history=log, global_step=last_step),
                               last_predictions={"q1": "Paris"} if answers is None else answers)

    assert final_evaluation(trainer([30, 60, 62], 62)) == {"tune": {"q1": "Paris"}}
    assert final_evaluation(trainer([30, 60], 62)) == {}  # the last evaluation is older
    assert final_evaluation(trainer([], 62)) == {}
    assert final_evaluation(trainer([62], 62, answers={})) == {}
