"""Typed inputs of the report: the files `study best` and `study seeds` export.

metrics.json and seeds.json are pydantic models that mirror the files key for key;
trials.csv and curves.csv are pandas frames whose columns and types are declared once
below. A malformed file is refused here with the file and the key it lacks, so the
markdown and the figures never re-check what they read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ValidationError, model_validator

from study.errors import StudyError
from study.files import read_json
from study.layout import ReportFiles

HINT_BEST = "run `study best` first"
HINT_SEEDS = "run `study seeds` first"
ROLES = ("teacher", "baseline", "distilled")


def _finite_or_none(value: Any) -> float | None:
    # A latency that was not measured may be absent, null, "n/a" or NaN: all mean "none".
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _text(value: Any) -> Any:
    return value if value is None else str(value)


Text = Annotated[str, BeforeValidator(_text)]
Latency = Annotated[float | None, BeforeValidator(_finite_or_none)]
CI = tuple[float, float]


# ---------------------------------------------------------------------------- metrics.json
class Scores(BaseModel):
    exact_match: float
    f1: float


class Latencies(BaseModel):
    batch1: Latency = None
    batch32: Latency = None


class ModelMetrics(BaseModel):
    model: Text
    dev: Scores
    tune: Scores
    parameters: int
    mlflow_run_id: Text
    latency_ms: Annotated[Latencies, BeforeValidator(lambda v: v or {})] = Latencies()
    trial: Any = None  # distilled only: the search trial it comes from
    params: dict[str, Any] | None = None  # distilled only: that trial's parameters


class SearchSummary(BaseModel):
    study_name: Any = "unknown"
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    best_trial: Any = None
    best_tune_f1: float | None = None
    best_params: dict[str, Any] | None = None
    parent_run_id: Any = None


class Metrics(BaseModel):
    profile: Any = "unknown"
    data: Any = "not recorded"
    teacher: ModelMetrics
    baseline: ModelMetrics
    distilled: ModelMetrics
    search: SearchSummary
    environment: Annotated[dict[str, Any], BeforeValidator(lambda v: v or {})] = {}

    @property
    def models(self) -> dict[str, ModelMetrics]:
        return {role: getattr(self, role) for role in ROLES}

    @property
    def best_trial(self) -> Any:
        """The search's best trial, else the trial the distilled model names."""
        if "best_trial" in self.search.model_fields_set:
            return self.search.best_trial
        return self.distilled.trial


# ---------------------------------------------------------------------------- seeds.json
class SeedMeans(BaseModel):
    exact_match: float
    f1: float


class SeedCIs(BaseModel):
    exact_match: CI
    f1: CI


class SeedRuns(BaseModel):
    exact_match: list[float]
    f1: list[float]
    mean: SeedMeans
    ci95: SeedCIs


class PairedBootstrap(BaseModel):
    f1_diff: float
    ci95: CI
    samples: int | None = None
    questions: int | None = None


class SeedsDoc(BaseModel):
    """Arms `baseline` (no teacher), `authors` (T = 2, 0.5/0.5) and `distilled` (the searched
    best), and the paired dev-F1 differences between them, named `<b>_minus_<a>`."""

    seeds: list[int]
    baseline: SeedRuns
    distilled: SeedRuns
    authors: SeedRuns | None = None
    authors_params: dict[str, float] | None = None
    params: dict[str, float] | None = None
    trial: int | None = None
    paired: dict[str, PairedBootstrap]

    @model_validator(mode="before")
    @classmethod
    def _two_arm_file(cls, raw: Any) -> Any:
        # seeds.json written before the authors' arm: its one difference is distilled - baseline.
        if isinstance(raw, dict) and "paired" not in raw and "paired_bootstrap" in raw:
            return {**raw, "paired": {"distilled_minus_baseline": raw["paired_bootstrap"]}}
        return raw


def _parse(model: type[BaseModel], raw: Any, path: Path, stage: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
    loc = error["loc"]
    key = ".".join(str(p) for p in loc if not isinstance(p, int))
    inside = isinstance(loc[-1], int)  # an item of a list
    if not inside and (error["type"] == "missing" or error.get("input", 0) is None):
        raise StudyError(f"{path.name} at {path} has no `{key}`: re-run `study {stage}`")
    if "ci95" in loc:
        raise StudyError(f"{path.name} at {path}: `{key}` must be [low, high]")
    raise StudyError(f"{path.name} at {path}: `{key}` must be a number (got {error['input']!r})")


# ---------------------------------------------------------------------------- CSV files
TRIAL_TEXT = ("state", "mlflow_run_id", "arm")
TRIAL_COLUMNS = ("number", "state", "temperature", "alpha_ce", "alpha_squad", "learning_rate",
                 "tune_f1", "tune_exact_match", "dev_f1", "dev_exact_match", "duration_s",
                 "mlflow_run_id", "arm")
TRIAL_REQUIRED = ("number", "state", "temperature", "alpha_ce", "alpha_squad", "tune_f1")
CURVE_NUMBERS = ("step", "tune_exact_match", "tune_f1")
CURVE_REQUIRED = ("role", "step", "tune_f1")


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise StudyError(f"{path.name} not found at {path}: {HINT_BEST}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise StudyError(f"{path.name} at {path} is empty: {HINT_BEST}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StudyError(f"{path.name} at {path} is not valid CSV ({first})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise StudyError(f"{path.name} at {path} lacks column(s) {', '.join(missing)}: {HINT_BEST}")
    return frame


def _numeric(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    text = frame[column].str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        raise StudyError(
            f"{path.name} at {path}: column {column} has a non-number {text[bad].iloc[0]!r}"
        )
    return values.astype(float)


def read_trials(path: Path) -> pd.DataFrame:
    """trials.csv: one row per trial, sorted by number; absent optional columns are NaN/''."""
    raw = _read_csv(path, TRIAL_REQUIRED)
    out = pd.DataFrame(index=raw.index)
    for column in TRIAL_COLUMNS:
        if column in TRIAL_TEXT:
            out[column] = raw[column].str.strip() if column in raw else ""
        elif column in raw:
            out[column] = _numeric(raw, column, path)
        else:
            out[column] = float("nan")
    if out["number"].isna().any():
        raise StudyError(f"{path.name} at {path}: every trial needs a number")
    out["number"] = out["number"].astype(int)
    out["state"] = out["state"].str.upper()
    return out.sort_values("number", kind="stable").reset_index(drop=True)


def read_curves(path: Path) -> pd.DataFrame:
    """curves.csv: tune scores per (role, step), sorted."""
    raw = _read_csv(path, CURVE_REQUIRED)
    out = pd.DataFrame({"role": raw["role"].str.strip().str.lower()})
    for column in CURVE_NUMBERS:
        out[column] = _numeric(raw, column, path) if column in raw else float("nan")
    return out.sort_values(["role", "step"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------- all inputs
def read_seeds(path: Path) -> SeedsDoc | None:
    if not path.exists():
        return None
    return _parse(SeedsDoc, read_json(path, "seeds.json", HINT_SEEDS), path, "seeds")


def read_importances(path: Path) -> dict[str, float] | None:
    if not path.exists():
        return None
    raw = read_json(path, "importances.json", HINT_BEST)
    if not isinstance(raw, dict):
        raise StudyError(f"importances.json at {path} must map parameter names to numbers")
    out = {str(k): _finite_or_none(v) for k, v in raw.items()}
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
    path = files.metrics
    raw = read_json(path, "metrics.json", HINT_BEST)
    if not isinstance(raw, dict):
        raise StudyError(f"metrics.json at {path} must hold an object: {HINT_BEST}")
    return Inputs(
        metrics=_parse(Metrics, raw, path, "best"),
        trials=read_trials(files.trials),
        curves=read_curves(files.curves),
        seeds=read_seeds(files.seeds),
        importances=read_importances(files.importances),
    )
