"""Window logits -> the best answer span per question (the n-best search of utils_qa.py).

The one post-processing of the study: evaluation, `study predict` and the served model
all pick their answers here.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import numpy as np


class Span(NamedTuple):
    """An answer: its text, score (start logit + end logit) and character span in the context.

    A question none of whose windows holds a valid span gets text "" and score NaN."""
    text: str
    score: float
    start: int
    end: int


NO_ANSWER = Span("", float("nan"), 0, 0)


def _window_best(s_logits: np.ndarray, e_logits: np.ndarray, valid: np.ndarray, n_best: int,
                 max_answer_length: int) -> tuple[float, int, int] | None:
    """Best (score, start token, end token) in one window, or None.

    Candidates are the n_best highest start and end logits (positions outside the
    context included, then dropped), as in utils_qa.py. np.argmax returns the first
    maximum in start-major order, so ties go to the same pair as a nested loop with `>`.
    """
    n = len(valid)
    s_top = np.argsort(s_logits[:n])[-1:-n_best - 1:-1]
    e_top = np.argsort(e_logits[:n])[-1:-n_best - 1:-1]
    length = e_top[None, :] - s_top[:, None] + 1
    scores = s_logits[s_top][:, None] + e_logits[e_top][None, :]
    # A NaN or -inf score never wins (a diverged model answers ""), as with `score > best`.
    ok = valid[s_top][:, None] & valid[e_top][None, :] & (length >= 1) \
        & (length <= max_answer_length) & (scores > -np.inf)
    if not ok.any():
        return None
    scores = np.where(ok, scores, -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    return scores[i, j], int(s_top[i]), int(e_top[j])


def best_spans(examples, features, start_logits: np.ndarray, end_logits: np.ndarray,
               n_best: int = 20, max_answer_length: int = 30) -> dict[str, Span]:
    """Best span per example across all its windows.

    `examples` need `id` and `context`; `features` (a Dataset or a dict of columns) need
    `example_id` and `offset_mapping` (None outside the context). Logit rows may be padded
    past a window's length (the Trainer pads with -100); those positions have no offsets
    and are never chosen. Among equal scores the earlier window wins.
    """
    example_ids = features["example_id"]
    if len(example_ids) != len(start_logits):
        raise ValueError(f"{len(example_ids)} features but {len(start_logits)} logit rows")
    by_example: dict[str, list[int]] = defaultdict(list)
    for i, eid in enumerate(example_ids):
        by_example[eid].append(i)
    offsets_all = features["offset_mapping"]
    spans: dict[str, Span] = {}
    for example in examples:
        best, best_offsets = None, None
        for fi in by_example.get(example["id"], []):
            offsets = offsets_all[fi]
            valid = np.fromiter((o is not None for o in offsets), dtype=bool, count=len(offsets))
            found = _window_best(start_logits[fi], end_logits[fi], valid, n_best, max_answer_length)
            if found is not None and (best is None or found[0] > best[0]):
                best, best_offsets = found, offsets
        if best is None:
            spans[example["id"]] = NO_ANSWER
            continue
        score, s, e = best
        start, end = int(best_offsets[s][0]), int(best_offsets[e][1])
        spans[example["id"]] = Span(example["context"][start:end], float(score), start, end)
    return spans


def postprocess_predictions(examples, features, start_logits: np.ndarray, end_logits: np.ndarray,
                            n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """id -> answer text: the official SQuAD predictions file."""
    spans = best_spans(examples, features, start_logits, end_logits, n_best, max_answer_length)
    return {qid: span.text for qid, span in spans.items()}
