"""Typed inputs of the report: the files `study best` and `study seeds` export.

Their schemas live in `study.results`, with the writers that validate them before writing;
this module only gathers them (and importances.json) into one `Inputs`. A malformed file is
refused there with the file and the key it lacks, so the markdown and the figures never
re-check what they read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from study.errors import StudyError
from study.files import read_json
from study.layout import ReportFiles
from study.results import (
    HINT_BEST,
    ROLES,
    Metrics,
    ModelMetrics,
    PairedDifference,
    SeedsDoc,
    finite_or_none,
    read_curves,
    read_metrics,
    read_seeds,
    read_trials,
)

__all__ = ["ROLES", "Inputs", "Metrics", "ModelMetrics", "PairedDifference", "SeedsDoc",
           "load_inputs", "read_importances"]


def read_importances(path: Path) -> dict[str, float] | None:
    if not path.exists():
        return None
    raw = read_json(path, "importances.json", HINT_BEST)
    if not isinstance(raw, dict):
        raise StudyError(f"importances.json at {path} must map parameter names to numbers")
    out = {str(k): finite_or_none(v) for k, v in raw.items()}
    bad = sorted(k for k, v in out.items() if v is None)
    if bad:
        raise StudyError(f"importances.json at {path}: `{bad[0]}` must be a number")
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Inputs:
    metrics: Metrics
    trials: pd.DataFrame
    curves: pd.DataFrame
    seeds: SeedsDoc | None
    importances: dict[str, float] | None

    @property
    def models(self) -> dict[str, ModelMetrics]:
        return self.metrics.models


def load_inputs(reports_dir: Path) -> Inputs:
    files = ReportFiles(Path(reports_dir))
    return Inputs(
        metrics=read_metrics(files.metrics),
        trials=read_trials(files.trials),
        curves=read_curves(files.curves),
        seeds=read_seeds(files.seeds),
        importances=read_importances(files.importances),
    )
