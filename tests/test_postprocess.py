"""postprocess_predictions / best_spans on hand-built windows and logits."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from study.postprocess import best_spans, postprocess_predictions

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


def test_span_carries_score_and_character_offsets():
    s = logits(**{f"p{WORD['capital']}": 5.0})
    e = logits(**{f"p{WORD['France']}": 4.0})
    span = best_spans(EX, features(("q1", OFFSETS)), np.stack([s]), np.stack([e]))["q1"]
    assert span.text == "capital of France" == CONTEXT[span.start:span.end]
    assert (span.start, span.end) == (13, 30) and span.score == pytest.approx(9.0)
    empty = best_spans([{"id": "q", "context": "x"}], features(("q", [None] * N)),
                       np.stack([s]), np.stack([e]))["q"]
    assert empty.text == "" and np.isnan(empty.score)


def reference_loop(examples, features, start_logits, end_logits, n_best, max_answer_length):
    """The pre-vectorisation implementation, kept verbatim as the oracle."""
    by_example = {}
    for i, eid in enumerate(features["example_id"]):
        by_example.setdefault(eid, []).append(i)
    offsets_all = features["offset_mapping"]
    predictions = {}
    for example in examples:
        context = example["context"]
        best_score, best_text = -np.inf, ""
        for fi in by_example.get(example["id"], []):
            s_logits, e_logits = start_logits[fi], end_logits[fi]
            offsets = offsets_all[fi]
            n = len(offsets)
            s_top = np.argsort(s_logits[:n])[-1:-n_best - 1:-1]
            e_top = np.argsort(e_logits[:n])[-1:-n_best - 1:-1]
            for s in s_top:
                if offsets[s] is None:
                    continue
                for e in e_top:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = s_logits[s] + e_logits[e]
                    if score > best_score:
                        best_score = score
                        best_text = context[offsets[s][0]:offsets[e][1]]
        predictions[example["id"]] = best_text
    return predictions


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_search_matches_the_loop_answer_for_answer(seed):
    rng = np.random.default_rng(seed)
    context = " ".join(f"w{i}" for i in range(200))
    words = context.split()
    word_offsets = [(m, m + len(w))
                    for m, w in zip(np.cumsum([0] + [len(w) + 1 for w in words[:-1]]), words)]
    examples, rows = [], []
    for q in range(30):
        examples.append({"id": f"q{q}", "context": context})
        for _ in range(rng.integers(0, 4)):          # 0 to 3 windows, interleaved below
            width = int(rng.integers(8, 40))
            first = int(rng.integers(0, len(word_offsets) - width))
            n_question = int(rng.integers(1, 5))
            offsets = [None] * (n_question + 2) + word_offsets[first:first + width] + [None]
            rows.append((f"q{q}", [list(map(int, o)) if o else None for o in offsets]))
    rng.shuffle(rows)
    width = max(len(o) for _, o in rows) + 3
    # Integer-valued logits make ties common; -100 fills past each window, as the Trainer pads.
    starts = rng.integers(-6, 7, (len(rows), width)).astype(np.float32)
    ends = rng.integers(-6, 7, (len(rows), width)).astype(np.float32)
    for i, (_, o) in enumerate(rows):
        starts[i, len(o):] = ends[i, len(o):] = -100.0
    if seed == 0:  # a diverged model: NaN logits never win
        starts[0, :] = np.nan
    feats = features(*rows)
    for n_best, max_len in ((20, 30), (3, 2), (1, 1), (50, 5)):
        want = reference_loop(examples, feats, starts, ends, n_best, max_len)
        got = best_spans(examples, feats, starts, ends, n_best, max_len)
        assert {k: v.text for k, v in got.items()} == want
        assert postprocess_predictions(examples, feats, starts, ends, n_best, max_len) == want
        assert all(v.text == context[v.start:v.end] for v in got.values())
