"""The official SQuAD v1.1 metric, on cases worked out by hand."""

from __future__ import annotations

import pytest

from study.metric import exact_match_score, f1_score, normalize_answer, per_question, squad_metrics


@pytest.mark.parametrize("raw, expected", [
    ("The Eiffel Tower", "eiffel tower"),          # article + case
    ("an apple a day", "apple day"),               # every article goes
    ("  lots   of\tspace\n ", "lots of space"),    # whitespace collapsed
    ("Hello, world!", "hello world"),              # punctuation
    ("U.S.A.", "usa"),                             # punctuation inside a token is deleted
    ("theatre anthem", "theatre anthem"),          # articles only as whole words
    ("A", ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_ignores_case_articles_punctuation():
    assert exact_match_score("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match_score("Denver Broncos", "Broncos") == 0.0


def test_f1_partial_overlap_by_hand():
    # prediction tokens: [denver, broncos, team] ; truth tokens: [broncos]
    # common = 1 ; precision = 1/3 ; recall = 1/1 ; F1 = 2 * (1/3) / (4/3) = 0.5
    assert f1_score("the Denver Broncos team", "Broncos") == pytest.approx(0.5)
    # prediction [w x y z] vs truth [y z v]: common 2, P = 2/4, R = 2/3, F1 = 4/7
    assert f1_score("w x y z", "y z v") == pytest.approx(4 / 7)


def test_f1_counts_repeated_tokens_once_per_occurrence():
    # pred [red red red], truth [red blue]: common = min(3, 1) = 1 ; P = 1/3, R = 1/2 ; F1 = 0.4
    assert f1_score("red red red", "red blue") == pytest.approx(0.4)


def test_empty_prediction_scores_zero():
    assert exact_match_score("", "Denver") == 0.0
    assert f1_score("", "Denver") == 0.0
    # A prediction made only of an article normalises to nothing, too.
    assert f1_score("the", "Denver") == 0.0


def test_max_over_references():
    refs = {"q": ["Broncos", "the Denver Broncos team", "Carolina"]}
    em, f1 = per_question({"q": "Denver Broncos"}, refs)["q"]
    assert em == 0.0
    # vs "Broncos": P 1/2 R 1 -> 2/3 ; vs "denver broncos team": P 1 R 2/3 -> 0.8 ; best 0.8
    assert f1 == pytest.approx(0.8)
    em, _ = per_question({"q": "carolina"}, refs)["q"]
    assert em == 1.0


def test_missing_prediction_counts_as_zero_and_scaling():
    refs = {"a": ["Paris"], "b": ["blue whale"], "c": ["1999"], "d": ["x y"]}
    preds = {"a": "Paris", "b": "the blue whale", "d": "x"}  # c missing
    scores = squad_metrics(preds, refs)
    # EM: a=1, b=1, c=0 (missing), d=0 -> 2/4 ; F1: 1, 1, 0, (P 1, R 1/2 -> 2/3)
    assert scores["exact_match"] == pytest.approx(100 * 2 / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + 1 + 0 + 2 / 3) / 4)


def test_extra_predictions_are_ignored():
    refs = {"a": ["Paris"]}
    assert squad_metrics({"a": "Paris", "zzz": "noise"}, refs) == {"exact_match": 100.0, "f1": 100.0}


def test_no_references_refused():
    with pytest.raises(ValueError):
        squad_metrics({"a": "x"}, {})
