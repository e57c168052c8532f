"""What the report computes from its inputs: the scores it shows, the gap recovered,
and the best-so-far curve."""

from __future__ import annotations

from typing import Any

import pandas as pd

from study.metric import gap_recovered
from study.report.inputs import ROLES, Inputs

# Sanh et al. (2019), Table 2 (SQuAD v1.1 dev, EM / F1) and Table 3 (parameters).
PAPER = {
    "teacher": ("BERT-base", 110, 81.2, 88.5),
    "baseline": ("DistilBERT", 66, 77.7, 85.8),
    "distilled": ("DistilBERT (D)", 66, 79.1, 86.9),
}
PAPER_V1_DISTILLED = (70.4, 79.8)  # DistilBERT (D) in the paper's first version
LABELS = {"teacher": "Teacher", "baseline": "Baseline", "distilled": "Distilled"}


def dev_scores(inp: Inputs) -> dict[str, dict[str, Any]]:
    """The table's dev EM/F1 per role: the seed mean with its CI where seeds.json has one,
    else the single run from metrics.json."""
    out = {}
    for role in ROLES:
        m = inp.models[role]
        s = getattr(inp.seeds, role, None) if role != "teacher" else None
        if s is None:
            out[role] = {"em": m.dev.exact_match, "f1": m.dev.f1, "em_ci": None, "f1_ci": None}
        else:
            out[role] = {"em": s.mean.exact_match, "f1": s.mean.f1,
                         "em_ci": s.ci95.exact_match, "f1_ci": s.ci95.f1}
    return out


PAPER_GAP = gap_recovered(PAPER["teacher"][3], PAPER["baseline"][3], PAPER["distilled"][3])


def best_so_far(trials: pd.DataFrame) -> pd.Series:
    """Running maximum of tune F1 over COMPLETE trials, in trial order (NaN before the first)."""
    scores = trials["tune_f1"].where(trials["state"] == "COMPLETE")
    return scores.cummax().ffill()


def importances_missing(inp: Inputs) -> str | None:
    """Why the report has no parameter importances (None when it has them)."""
    if inp.importances:
        return None
    if inp.importances is None:
        return "not run (importances.json is absent)"
    complete = inp.metrics.search.n_complete
    if complete < 2:
        return (f"not estimated: Optuna's importances need at least two complete trials "
                f"(this study has {complete})")
    return "not estimated: Optuna could not tell the parameters' effects apart in these trials"
