"""Window logits -> one answer string per question (the n-best search of utils_qa.py)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def postprocess_predictions(examples, features, start_logits: np.ndarray, end_logits: np.ndarray,
                            n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """Best span per example across all its windows.

    `examples` need `id` and `context`; `features` need `example_id` and
    `offset_mapping` (None outside the context). Logit rows may be padded past a
    window's length (the Trainer pads with -100); those positions have no offsets
    and are never chosen.
    """
    if len(features) != len(start_logits):
        raise ValueError(f"{len(features)} features but {len(start_logits)} logit rows")
    by_example: dict[str, list[int]] = defaultdict(list)
    for i, eid in enumerate(features["example_id"]):
        by_example[eid].append(i)
    offsets_all = features["offset_mapping"]
    predictions: dict[str, str] = {}
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
