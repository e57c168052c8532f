"""What `study best` measures of each model's inference cost (results.Latencies): latency
one question at a time, throughput in batches of 32, and the padding batching computes."""

from __future__ import annotations

import pytest

from study.best import latency, padding_share
from study.qa import QASettings, QuestionAnswerer
from study.results import Latencies


def test_padding_share_counts_what_each_forward_pass_pads():
    # Batches of 2 windows: [10, 6] pads 4 tokens of 20, [8] pads none.
    assert padding_share([[10, 6, 8]], 2) == pytest.approx(1 - 24 / 28)
    # Alone, no window is padded; padding never crosses calls.
    assert padding_share([[10, 6, 8]], 1) == 0.0
    assert padding_share([[10], [6]], 32) == 0.0
    assert padding_share([[5, 5, 5]], 32) == 0.0


def test_latency_is_measured_on_the_same_questions(tiny_distilbert_qa, distil_tokenizer,
                                                   xquad_records):
    qa = QuestionAnswerer(tiny_distilbert_qa.eval(), distil_tokenizer,
                          QASettings(max_length=128, doc_stride=64))
    cost = Latencies.model_validate(latency(qa, xquad_records, questions=40))
    assert cost.questions == 40
    assert 0 < cost.batch1_median_ms <= cost.batch1_p95_ms
    assert cost.batch32_questions_per_s > 0
    # XQuAD contexts run to several 128-token windows of different lengths: some padding.
    assert 0 < cost.batch32_padding < 1
