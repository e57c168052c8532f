"""The numbers `dvc metrics show` and `dvc metrics diff` read: small flat JSON files under
`<reports>/metrics/`, numbers only.

One file per row of `dvc metrics show` (a model, a seed summary, the trial counts), with the
same short keys in every file, so the rows share columns and the table fits a terminal:
`em`/`f1` (dev, %), `*_lo`/`*_hi` (95% CI), `ms` (median latency per question, batch 1),
`qps` (questions per second, batches of 32), `gap`
(% of the teacher-baseline dev F1 gap the distilled student recovers), `n` (seeds, or
trials). Provenance (run ids, versions, commit, data) stays in metrics.json and
seeds.json, which are plain outputs, not DVC metrics.
"""

from __future__ import annotations

from typing import Any

from study.files import write_json
from study.layout import ReportFiles
from study.metric import gap_recovered

ROLES = ("teacher", "baseline", "distilled")
SEED_ARMS = ("baseline", "authors", "distilled")  # those present in seeds.json


def _round(value: float | None) -> float | None:
    # Two decimals of a percentage or a millisecond: finer differences are noise, and
    # shorter numbers keep `dvc metrics show` narrow.
    return None if value is None else round(float(value), 2)


def _row(**values: Any) -> dict[str, float]:
    return {k: _round(v) if isinstance(v, float) else v for k, v in values.items() if v is not None}


def of_best(metrics: dict) -> dict[str, dict[str, float]]:
    """Rows from the `best` stage's metrics.json document: dev EM/F1 and latency per model,
    the gap recovered, the trial counts."""
    def cost(role: str, key: str) -> float | None:
        # A metrics.json from before `latency` has none: the row shows none.
        return (metrics[role].get("latency") or {}).get(key)

    rows = {role: _row(em=metrics[role]["dev"]["exact_match"], f1=metrics[role]["dev"]["f1"],
                       ms=cost(role, "batch1_median_ms"), qps=cost(role, "batch32_questions_per_s"))
            for role in ROLES}
    f1 = {role: metrics[role]["dev"]["f1"] for role in ROLES}
    rows["distilled"].update(_row(gap=gap_recovered(f1["teacher"], f1["baseline"], f1["distilled"])))
    s = metrics["search"]
    rows["trials"] = {"n": s["n_trials"], "complete": s["n_complete"], "pruned": s["n_pruned"],
                      "failed": s["n_failed"]}
    return rows


def of_seeds(result: dict) -> dict[str, dict[str, float]]:
    """Rows from the `seeds` stage's seeds.json document: per arm, seed means with their 95%
    CIs (`seeds_<arm>`); per paired difference `<b>_minus_<a>`, the F1 difference and its
    bootstrap CI (`<b>_vs_<a>`). A file written before the authors' arm has one difference,
    `paired_bootstrap` (distilled - baseline)."""
    rows = {}
    for arm in (a for a in SEED_ARMS if a in result):
        m = result[arm]
        rows[f"seeds_{arm}"] = _row(
            em=m["mean"]["exact_match"], em_lo=m["ci95"]["exact_match"][0],
            em_hi=m["ci95"]["exact_match"][1], f1=m["mean"]["f1"], f1_lo=m["ci95"]["f1"][0],
            f1_hi=m["ci95"]["f1"][1], n=len(result["seeds"]))
    paired = result.get("paired") or {"distilled_minus_baseline": result["paired_bootstrap"]}
    diffs = {name.replace("_minus_", "_vs_"): pb for name, pb in paired.items()}
    for name, pb in diffs.items():
        rows[name] = _row(f1=pb["f1_diff"], f1_lo=pb["ci95"][0], f1_hi=pb["ci95"][1])
    return rows


def write(reports: ReportFiles, rows: dict[str, dict[str, float]]) -> None:
    for name, row in rows.items():
        write_json(reports.metric(name), row)
