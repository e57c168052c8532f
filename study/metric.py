"""The official SQuAD v1.1 metric (evaluate-v1.1.py), the one scoring path of the study.

`evaluate.load("squad")` fetches this same logic from the hub at run time, which the
offline machines cannot do; the functions below follow the official script line by line.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def per_question(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, tuple[float, float]]:
    """id -> (EM, F1) in [0, 1], max over reference answers; a missing prediction scores 0."""
    out = {}
    for qid, truths in references.items():
        pred = predictions.get(qid, "")
        out[qid] = (max(exact_match_score(pred, t) for t in truths),
                    max(f1_score(pred, t) for t in truths))
    return out


def squad_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """{"exact_match", "f1"} x 100 over every reference question, as the official script."""
    if not references:
        raise ValueError("no reference questions to score")
    scores = per_question(predictions, references).values()
    n = len(references)
    return {"exact_match": 100.0 * sum(s[0] for s in scores) / n,
            "f1": 100.0 * sum(s[1] for s in scores) / n}


def gap_recovered(teacher: float, baseline: float, distilled: float) -> float | None:
    """Share (%) of the teacher-baseline gap that the distilled student closes."""
    gap = teacher - baseline
    if abs(gap) < 1e-12:
        return None
    return 100.0 * (distilled - baseline) / gap
