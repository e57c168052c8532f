"""The predictor (study.qa) against the evaluation path, on tiny models and real windows."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import make_tiny_bert_qa, make_tiny_distilbert_qa
from transformers import DataCollatorWithPadding, TrainingArguments
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from study.data import build_eval_features
from study.postprocess import best_spans, postprocess_predictions
from study.qa import OutOfTime, QASettings, QuestionAnswerer
from study.trainer import QuestionAnsweringTrainer

SETTINGS = QASettings(max_length=128, doc_stride=64, n_best=20, max_answer_length=30, batch_size=8)


@pytest.fixture(scope="module")
def records(xquad_records):
    # Two articles; several of these contexts need more than one 128-token window.
    return xquad_records[:16] + xquad_records[600:608]


def evaluation_predictions(tmp_path, model, tokenizer, records, settings: QASettings) -> dict:
    """What QuestionAnsweringTrainer (evaluation during training) answers."""
    feats = build_eval_features(records, tokenizer, settings.max_length, settings.doc_stride)
    assert len(feats) > len(records), "the split should have multi-window contexts"

    def post(examples, features, start_logits, end_logits):
        return postprocess_predictions(examples, features, start_logits, end_logits,
                                       settings.n_best, settings.max_answer_length)

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                             per_device_eval_batch_size=settings.batch_size, disable_tqdm=True)
    trainer = QuestionAnsweringTrainer(model=model, args=args, processing_class=tokenizer,
                                       data_collator=DataCollatorWithPadding(tokenizer),
                                       post_process_function=post)
    texts, _ = trainer.predict(feats, records)
    return texts


@pytest.mark.parametrize("architecture", ["distilbert", "bert"])
def test_predictor_answers_exactly_as_evaluation(tmp_path, records, tokenizer, distil_tokenizer,
                                                 architecture):
    if architecture == "bert":  # BERT takes token_type_ids, DistilBERT must not get them
        model, tok = make_tiny_bert_qa(len(tokenizer), seed=5).eval(), tokenizer
    else:
        model, tok = make_tiny_distilbert_qa(len(tokenizer), seed=6).eval(), distil_tokenizer
    want = evaluation_predictions(tmp_path, model, tok, records, SETTINGS)
    spans = QuestionAnswerer(model, tok, SETTINGS).answer_records(records)
    assert {qid: s.text for qid, s in spans.items()} == want
    assert len(set(want.values())) > 3  # real, varied answers, not one constant
    for r in records:
        s = spans[r["id"]]
        assert s.text == r["context"][s.start:s.end] and s.score == s.score


def test_batch_size_does_not_change_answers(records, tokenizer):
    qa = QuestionAnswerer(make_tiny_bert_qa(len(tokenizer), seed=2).eval(), tokenizer, SETTINGS)
    one = qa.answer_records(records, batch_size=1)
    many = qa.answer_records(records, batch_size=32)
    assert {k: v.text for k, v in one.items()} == {k: v.text for k, v in many.items()}
    # predict() on bare pairs returns the same, in order.
    answers = qa.predict([r["question"] for r in records], [r["context"] for r in records])
    assert [a.text for a in answers] == [many[r["id"]].text for r in records]
    with pytest.raises(ValueError):
        qa.predict(["q1", "q2"], ["only one context"])


def test_a_deadline_stops_before_the_next_batch(records, tokenizer):
    """A caller with a time limit (the served model) gets OutOfTime, with how far it got,
    instead of answers computed after its limit; no deadline answers as before."""
    qa = QuestionAnswerer(make_tiny_bert_qa(len(tokenizer), seed=2).eval(), tokenizer, SETTINGS)
    features = qa.windows(records)
    with pytest.raises(OutOfTime) as info:
        qa.window_logits(features, batch_size=2, deadline=time.monotonic() - 1)
    assert (info.value.done, info.value.total) == (0, len(features["input_ids"]))
    with pytest.raises(OutOfTime):
        qa.predict([r["question"] for r in records], [r["context"] for r in records],
                   deadline=time.monotonic() - 1)
    far = time.monotonic() + 3600
    assert {k: v.text for k, v in qa.answer_records(records, deadline=far).items()} == \
        {k: v.text for k, v in qa.answer_records(records).items()}


class KeywordQA(torch.nn.Module):
    """A stand-in QA model: the answer starts at token `start_id` and ends at `end_id`.

    Deterministic logits make the window the answer sits in the only right choice."""

    def __init__(self, start_id: int, end_id: int):
        super().__init__()
        self.start_id, self.end_id = start_id, end_id
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the predictor a device

    def forward(self, input_ids=None, attention_mask=None):
        base = torch.zeros(input_ids.shape) + self.anchor
        return QuestionAnsweringModelOutput(
            start_logits=base + 10.0 * (input_ids == self.start_id),
            end_logits=base + 10.0 * (input_ids == self.end_id))


def test_long_context_is_answered_from_its_best_window(distil_tokenizer):
    tok = distil_tokenizer
    filler = " ".join(["the river runs past the old mill and the quiet town"] * 30)
    context = f"{filler} The treasure lies under the zebra statue near the harbour. {filler}"
    settings = QASettings(max_length=64, doc_stride=32, n_best=20, max_answer_length=30)
    zebra, statue = (tok.convert_tokens_to_ids(w) for w in ("zebra", "statue"))
    qa = QuestionAnswerer(KeywordQA(zebra, statue), tok, settings)
    record = [{"id": "q", "question": "Where is the treasure?", "context": context}]
    features = qa.windows(record)
    holding = [i for i, ids in enumerate(features["input_ids"]) if zebra in ids]
    n_windows = len(features["input_ids"])
    assert n_windows > 10 and 0 < min(holding) and max(holding) < n_windows - 1  # a middle one
    span = qa("Where is the treasure?", context)
    assert span.text == "zebra statue"
    assert context[span.start:span.end] == "zebra statue" and span.start == context.index("zebra")
    assert span.score == pytest.approx(20.0)
    # The same windows searched one at a time: the best of them is the predictor's answer.
    starts, ends = qa.window_logits(features)
    per_window = [best_spans(record, {"example_id": ["q"], "offset_mapping": [o]},
                             starts[i:i + 1], ends[i:i + 1])["q"]
                  for i, o in enumerate(features["offset_mapping"])]
    assert max((s for s in per_window if s.text), key=lambda s: s.score) == span


def test_no_valid_span_gives_an_empty_answer(distil_tokenizer):
    qa = QuestionAnswerer(KeywordQA(-1, -1), distil_tokenizer, SETTINGS)
    span = qa("Anything?", "")
    assert span.text == "" and span.start == span.end == 0


def test_cpu_inference_stays_float32_whatever_the_run_trains_in(records, tokenizer):
    """Autocast follows runtime.mixed_precision on a GPU only: on the CPU the logits (and so
    EM/F1) are float32's, for every setting."""
    from study.modeling import inference_autocast, precision

    assert precision("auto", "cpu") == "no" and precision("bf16", "cpu") == "bf16"
    assert isinstance(inference_autocast("bf16", "cpu"), type(inference_autocast("no", "cpu")))
    model = make_tiny_bert_qa(len(tokenizer), seed=5).eval()
    qa = {p: QuestionAnswerer(model, tokenizer, SETTINGS, precision=p) for p in ("no", "bf16", "auto")}
    feats = qa["no"].windows(records)
    starts = {p: a.window_logits(feats)[0] for p, a in qa.items()}
    assert starts["no"].dtype == "float32"
    assert (starts["no"] == starts["bf16"]).all() and (starts["no"] == starts["auto"]).all()
