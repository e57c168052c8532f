"""postprocess_predictions on hand-built windows and logits."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from study.postprocess import postprocess_predictions

CONTEXT = "Paris is the capital of France"
# CLS, two question tokens, SEP, the six context words, SEP.
OFFSETS = [None, None, None, None, (0, 5), (6, 8), (9, 12), (13, 20), (21, 23), (24, 30), None]
WORD = {"Paris": 4, "is": 5, "the": 6, "capital": 7, "of": 8, "France": 9}
N = len(OFFSETS)


def features(*windows):
    """windows: (example_id, offsets) pairs -> a Dataset as build_eval_features makes."""
    return Dataset.from_dict({"example_id": [w[0] for w in windows],
                              "offset_mapping": [[list(o) if o else None for o in w[1]]
                                                 for w in windows]})


def logits(n=N, fill=0.0, **at):
    row = np.full(n, fill, dtype=np.float32)
    for pos, value in at.items():
        row[int(pos[1:])] = value
    return row


def predict(examples, feats, starts, ends, **kw):
    return postprocess_predictions(examples, feats, np.stack(starts), np.stack(ends), **kw)


EX = [{"id": "q1", "context": CONTEXT}]


def test_picks_best_scoring_span():
    s = logits(**{f"p{WORD['capital']}": 5.0, f"p{WORD['is']}": 1.0})
    e = logits(**{f"p{WORD['France']}": 4.0, f"p{WORD['of']}": 3.0})
    assert predict(EX, features(("q1", OFFSETS)), [s], [e]) == {"q1": "capital of France"}


def test_never_picks_cls_or_question_tokens():
    # CLS and question tokens carry by far the highest logits; they have no offsets.
    s = logits(p0=100.0, p1=90.0, p2=80.0, p10=70.0, **{f"p{WORD['France']}": 1.0})
    e = logits(p0=100.0, p1=90.0, p3=85.0, p10=70.0, **{f"p{WORD['France']}": 1.0})
    assert predict(EX, features(("q1", OFFSETS)), [s], [e]) == {"q1": "France"}


def test_end_before_start_is_never_chosen():
    # (start France, end Paris) scores 20 but is backwards; best valid is (Paris, Paris) = 15.
    s = logits(**{f"p{WORD['France']}": 10.0, f"p{WORD['Paris']}": 5.0})
    e = logits(**{f"p{WORD['Paris']}": 10.0, f"p{WORD['France']}": 4.0})
    assert predict(EX, features(("q1", OFFSETS)), [s], [e]) == {"q1": "Paris"}


def test_respects_max_answer_length():
    # (Paris .. France) = 6 tokens scores 20; (capital .. France) = 3 tokens scores 18.
    s = logits(**{f"p{WORD['Paris']}": 10.0, f"p{WORD['capital']}": 8.0})
    e = logits(**{f"p{WORD['France']}": 10.0, f"p{WORD['Paris']}": 1.0})
    feats = features(("q1", OFFSETS))
    assert predict(EX, feats, [s], [e], max_answer_length=30) == {"q1": CONTEXT}
    assert predict(EX, feats, [s], [e], max_answer_length=3) == {"q1": "capital of France"}
    # One-token answers only: Paris (10 + 1) beats France (0 + 10) and capital (8 + 0).
    assert predict(EX, feats, [s], [e], max_answer_length=1) == {"q1": "Paris"}


def test_best_across_two_windows_of_one_example():
    # Window 1 sees "Paris is the capital", window 2 "the capital of France".
    w1 = OFFSETS[:4] + OFFSETS[4:8] + [None]
    w2 = OFFSETS[:4] + OFFSETS[6:10] + [None]
    n = len(w1)
    s1 = logits(n, p4=3.0)                   # "Paris": 3 + 3
    e1 = logits(n, p4=3.0)
    s2 = logits(n, p5=4.0)                   # "capital of France" in window 2: 4 + 5
    e2 = logits(n, p7=5.0)
    other = [{"id": "q2", "context": CONTEXT}]
    feats = features(("q1", w1), ("q2", w1), ("q1", w2))
    out = predict(EX + other, feats, [s1, logits(n, p7=9.0), s2],
                  [e1, logits(n, p7=9.0), e2])
    assert out == {"q1": "capital of France", "q2": "capital"}
    # Swapping which window scores higher changes the answer: both windows are searched.
    out = predict(EX, features(("q1", w1), ("q1", w2)), [logits(n, p4=9.0), s2],
                  [logits(n, p4=9.0), e2])
    assert out == {"q1": "Paris"}


def test_example_without_windows_gets_empty_answer():
    out = predict(EX + [{"id": "lonely", "context": "x"}], features(("q1", OFFSETS)),
                  [logits(p4=1.0)], [logits(p4=1.0)])
    assert out == {"q1": "Paris", "lonely": ""}


def test_rows_padded_with_minus_100_beyond_the_window():
    # The Trainer concatenates batches of different lengths by padding with -100. Here
    # every real logit is below -100, so a padded position would win if it were looked at.
    n_padded = N + 5
    s = logits(n_padded, fill=-500.0, **{f"p{WORD['of']}": -200.0})
    e = logits(n_padded, fill=-500.0, **{f"p{WORD['France']}": -200.0})
    s[N:] = -100.0
    e[N:] = -100.0
    assert predict(EX, features(("q1", OFFSETS)), [s], [e]) == {"q1": "of France"}


def test_row_count_must_match_features():
    with pytest.raises(ValueError):
        postprocess_predictions(EX, features(("q1", OFFSETS)), np.zeros((2, N)), np.zeros((2, N)))
