"""The result documents, each declared once: the writer validates against its schema before
anything reaches disk, and every reader (`study best`, `study search`, the report) parses
with the same schema, so no reader re-checks what a writer wrote.

- `<stage folder>/metrics.json` (`StageMetrics`): one training's scores, curve and timings,
  written by `study.fit.fit`;
- `reports/metrics.json` (`Metrics`): teacher, baseline and best student side by side
  (`study best`);
- `reports/seeds.json` (`SeedsDoc`): the arms re-trained over seeds (`study seeds`);
- `reports/trials.csv` (`TrialRow`) and `reports/curves.csv` (`CurveRow`): one row model
  each, whose field order is the CSV's column order.

A writer must give every field; a default only lets a reader open a file written before
that field existed.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ValidationError, model_validator

from study.errors import StudyError
from study.files import read_json, write_atomic, write_json

HINT_BEST = "run `study best` first"
HINT_SEEDS = "run `study seeds` first"
ROLES = ("teacher", "baseline", "distilled")

Doc = TypeVar("Doc", bound=BaseModel)


def finite_or_none(value: Any) -> float | None:
    # A latency that was not measured may be absent, null, "n/a" or NaN: all mean "none".
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _text(value: Any) -> Any:
    return value if value is None else str(value)


Text = Annotated[str, BeforeValidator(_text)]
Cell = Annotated[str, BeforeValidator(lambda v: "" if v is None else v)]  # empty CSV cell: ""
Latency = Annotated[float | None, BeforeValidator(finite_or_none)]
CI = tuple[float, float]


class Scores(BaseModel):
    exact_match: float
    f1: float


# ---------------------------------------------------------------- <stage>/metrics.json
class CurvePoint(BaseModel):
    step: int
    tune_exact_match: float
    tune_f1: float


class LossPoint(BaseModel):
    step: int
    loss: float


class StageMetrics(BaseModel):
    role: str
    profile: str
    seed: int
    tune: Scores
    dev: Scores
    curve: list[CurvePoint]
    train_loss: list[LossPoint]
    train_windows: int
    steps: int
    parameters: int
    train_seconds: float
    teacher_cache_seconds: float
    wall_seconds: float
    distill: dict[str, Any] | None  # the DistillConfig trained with; None without a teacher
    mlflow_run_id: str | None
    # Steps restored from a checkpoint (a training resumed after a kill); 0: trained whole.
    resumed_from_step: int = 0


# ---------------------------------------------------------------- reports/metrics.json
class Latencies(BaseModel):
    """Inference cost on the same dev `questions`, through the predictor (windows, forward,
    n-best search): one question at a time (batch 1, each window alone, so unpadded: median
    and 95th percentile in ms) and batches of 32 questions (throughput, questions per second;
    each forward pass pads its windows to the longest, `batch32_padding` is the share of the
    tokens computed that are padding)."""

    questions: int | None = None
    batch1_median_ms: Latency = None
    batch1_p95_ms: Latency = None
    batch32_questions_per_s: Latency = None
    batch32_padding: Latency = None


class ModelMetrics(BaseModel):
    model: Text
    dev: Scores
    tune: Scores
    parameters: int
    mlflow_run_id: Text
    # A file from before `latency` (its `latency_ms` mixed both batch sizes per question)
    # reads as not measured.
    latency: Annotated[Latencies, BeforeValidator(lambda v: v or {})] = Latencies()


class DistilledMetrics(ModelMetrics):
    trial: Any = None  # the search trial it comes from
    params: dict[str, Any] | None = None  # that trial's parameters


class RegisteredModel(BaseModel):
    name: str
    version: str


class SearchSummary(BaseModel):
    """The study's state (reports/search.json, beside trials.csv; `search` in metrics.json).
    `n_trials` counts trial records (a configuration re-run after an interruption has two);
    `configurations` the configurations finished, `target` those asked for, and `stopped`
    says in words why a session ended before its target (a time bound, a Ctrl-C, a lost
    database), so nobody reads a cut search as a whole one."""

    study_name: Any = "unknown"
    configurations: int | None = None
    target: int | None = None
    stopped_by: str | None = None
    stopped: str | None = None
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    n_running: int = 0
    best_trial: Any = None
    best_tune_f1: float | None = None
    best_params: dict[str, Any] | None = None
    best_dev_f1: float | None = None
    best_dev_exact_match: float | None = None
    parent_run_id: Any = None


class Metrics(BaseModel):
    profile: Any = "unknown"
    data: Any = "not recorded"
    teacher: ModelMetrics
    baseline: ModelMetrics
    distilled: DistilledMetrics
    search: SearchSummary
    best_run_id: str | None = None
    registered_model: RegisteredModel | None = None
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


# ---------------------------------------------------------------- reports/seeds.json
class SeedMeans(BaseModel):
    exact_match: float
    f1: float


class SeedCIs(BaseModel):
    exact_match: CI
    f1: CI


class SeedRuns(BaseModel):
    """One arm over seeds: per-seed dev scores, and the mean with its 95% CI over seeds and
    questions (study.intervals)."""

    exact_match: list[float]
    f1: list[float]
    mean: SeedMeans
    ci95: SeedCIs
    seeds: list[int] | None = None
    half_width: SeedMeans | None = None


class Calibration(BaseModel):
    """The interval checked by simulation at the comparison's own variance components."""

    sd_seed: float
    sd_question: float
    sd_residual: float
    studies: int
    excludes_zero_with_no_difference: float
    coverage: float
    effect_twice_seed_sd: float
    excludes_zero_with_that_effect: float


class PairedDifference(BaseModel):
    """Mean dev-F1 difference b - a, paired by seed and question; `ci95` resamples what
    `resampled` names. Files written before seeds were resampled have only `f1_diff`, `ci95`
    (questions alone) and `questions`."""

    f1_diff: float
    ci95: CI
    half_width: float | None = None
    se: float | None = None
    df: float | None = None
    seeds: list[int] | None = None
    questions: int | None = None
    resampled: list[str] = ["questions"]
    per_seed: list[float] | None = None
    seed_t_ci95: CI | None = None
    question_bootstrap_ci95: CI | None = None
    calibration: Calibration | None = None


class GapRecovered(BaseModel):
    """Share (%) of the teacher - baseline dev F1 gap an arm recovers, with its 95% CI."""

    estimate: float
    ci95: CI
    half_width: float
    seeds: list[int]
    questions: int
    resampled: list[str]
    teacher_f1: float


class SeedsDoc(BaseModel):
    """Arms `baseline` (no teacher), `authors` (T = 2, 0.5/0.5) and `distilled` (the searched
    best), the paired dev-F1 differences between them, named `<b>_minus_<a>`, and the share of
    the teacher's gap each distilled arm recovers."""

    seeds: list[int]
    trial: int | None = None
    params: dict[str, float] | None = None
    authors_params: dict[str, float] | None = None
    method: str | None = None
    baseline: SeedRuns
    authors: SeedRuns | None = None
    distilled: SeedRuns
    paired: dict[str, PairedDifference]
    gap_recovered: dict[str, GapRecovered] | None = None
    mlflow_run_ids: dict[str, list[str | None]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _two_arm_file(cls, raw: Any) -> Any:
        # seeds.json written before the authors' arm: its one difference is distilled - baseline.
        if isinstance(raw, dict) and "paired" not in raw and "paired_bootstrap" in raw:
            return {**raw, "paired": {"distilled_minus_baseline": raw["paired_bootstrap"]}}
        return raw


# ---------------------------------------------------------------- CSV rows
class TrialRow(BaseModel):
    """One Optuna trial in reports/trials.csv. Fields without a default are the columns a
    reader requires; an empty cell is None (a number) or "" (a text)."""

    number: int
    state: str
    slot: int | None = None  # the configuration's place in the study (a re-run keeps it)
    temperature: float | None
    alpha_ce: float | None
    alpha_squad: float | None
    learning_rate: float | None = None
    tune_f1: float | None
    tune_exact_match: float | None = None
    dev_f1: float | None = None
    dev_exact_match: float | None = None
    duration_s: float | None = None
    mlflow_run_id: Cell = ""
    arm: Cell = ""
    fail_reason: Cell = ""


class CurveRow(BaseModel):
    """One tune evaluation of a training in reports/curves.csv."""

    role: str
    step: int
    tune_exact_match: float | None = None
    tune_f1: float


# ---------------------------------------------------------------- validation
def _problem(exc: ValidationError) -> str:
    """The first error as one line naming the field: 'has no `a.b`' or '`a.b` must be ...'."""
    error = exc.errors()[0]
    loc = error["loc"]
    key = ".".join(str(p) for p in loc if not isinstance(p, int))
    inside = bool(loc) and isinstance(loc[-1], int)  # an item of a list
    if not inside and (error["type"] == "missing" or error.get("input", 0) is None):
        return f"has no `{key}`"
    if "ci95" in loc:
        return f"`{key}` must be [low, high]"
    if error["type"].startswith(("float", "int")):
        return f"`{key}` must be a number (got {error['input']!r})"
    return f"`{key}`: {error['msg'].lower()} (got {error['input']!r})"


def _unset(value: Any, key: str = "") -> str | None:
    """The first field a writer left to its default (defaults are for reading old files)."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            path = f"{key}.{name}" if key else name
            if name not in value.model_fields_set:
                return path
            found = _unset(getattr(value, name), path)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        return next((f for f in (_unset(v, key) for v in value) if f), None)
    elif isinstance(value, dict):
        return next((f for f in (_unset(v, f"{key}.{k}") for k, v in value.items()) if f), None)
    return None


def to_write(schema: type[Doc], doc: Doc | Mapping[str, Any], what: str) -> Doc:
    """`doc` as a complete `schema` document, else a one-line StudyError naming `what` (the
    file) and the field."""
    try:
        model = doc if isinstance(doc, schema) else schema.model_validate(doc)
    except ValidationError as exc:
        problem = _problem(exc)
    else:
        missing = _unset(model)
        if not missing:
            return model
        problem = f"has no `{missing}`"
    raise StudyError(f"{what} not written: {'it ' if problem.startswith('has') else ''}{problem}")


def parse(schema: type[Doc], raw: Any, path: Path, stage: str) -> Doc:
    """A document read from `path`, else a StudyError naming the file, the field and the
    command that writes it."""
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        problem = _problem(exc)
    if problem.startswith("has no"):
        raise StudyError(f"{path.name} at {path} {problem}: re-run `study {stage}`")
    raise StudyError(f"{path.name} at {path}: {problem}")


def _read_doc(schema: type[Doc], path: Path, stage: str, hint: str) -> Doc:
    path = Path(path)
    raw = read_json(path, path.name, hint)
    if not isinstance(raw, dict):
        raise StudyError(f"{path.name} at {path} must hold an object: {hint}")
    return parse(schema, raw, path, stage)


# ---------------------------------------------------------------- JSON documents
def write_stage_metrics(path: Path, doc: StageMetrics | Mapping[str, Any]) -> StageMetrics:
    model = to_write(StageMetrics, doc, str(path))
    write_json(path, model.model_dump())
    return model


def write_search_summary(path: Path, doc: SearchSummary | Mapping[str, Any]) -> SearchSummary:
    model = to_write(SearchSummary, doc, str(path))
    write_json(path, model.model_dump())
    return model


def read_stage_metrics(path: Path, stage: str) -> StageMetrics:
    """A training stage's metrics.json (`stage`: the command that writes it)."""
    return _read_doc(StageMetrics, path, stage, f"run `study {stage}` first")


def write_metrics(path: Path, doc: Metrics | Mapping[str, Any]) -> Metrics:
    model = to_write(Metrics, doc, str(path))
    write_json(path, model.model_dump())
    return model


def read_metrics(path: Path) -> Metrics:
    return _read_doc(Metrics, path, "best", HINT_BEST)


def write_seeds(path: Path, doc: SeedsDoc | Mapping[str, Any]) -> SeedsDoc:
    model = to_write(SeedsDoc, doc, str(path))
    write_json(path, model.model_dump())
    return model


def read_seeds(path: Path) -> SeedsDoc | None:
    """seeds.json, or None before `study seeds` has run."""
    path = Path(path)
    if not path.exists():
        return None
    return parse(SeedsDoc, read_json(path, "seeds.json", HINT_SEEDS), path, "seeds")


# ---------------------------------------------------------------- CSV documents
def _write_rows(path: Path, schema: type[BaseModel], rows: Iterable[BaseModel | Mapping]) -> None:
    valid = [to_write(schema, row, f"{path} (row {i})") for i, row in enumerate(rows, 1)]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(schema.model_fields))
    writer.writeheader()
    writer.writerows(row.model_dump() for row in valid)  # None is written as an empty cell
    write_atomic(path, text.getvalue())


def _read_rows(path: Path, schema: type[BaseModel], hint: str) -> pd.DataFrame:
    """Every column of `schema`: text stripped ("" when absent), numbers as floats (NaN when
    empty or absent); a required column that is missing, or a non-number, is refused."""
    if not path.exists():
        raise StudyError(f"{path.name} not found at {path}: {hint}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise StudyError(f"{path.name} at {path} is empty: {hint}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StudyError(f"{path.name} at {path} is not valid CSV ({first})") from None
    fields = schema.model_fields
    missing = [c for c, f in fields.items() if f.is_required() and c not in raw.columns]
    if missing:
        raise StudyError(f"{path.name} at {path} lacks column(s) {', '.join(missing)}: {hint}")
    out = pd.DataFrame(index=raw.index)
    for column, field in fields.items():
        if field.annotation is str:
            out[column] = raw[column].str.strip() if column in raw else ""
        elif column in raw:
            out[column] = _numeric(raw, column, path)
        else:
            out[column] = float("nan")
    return out


def _numeric(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    text = frame[column].str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        raise StudyError(
            f"{path.name} at {path}: column {column} has a non-number {text[bad].iloc[0]!r}"
        )
    return values.astype(float)


def write_trials(path: Path, rows: Iterable[TrialRow | Mapping[str, Any]]) -> None:
    _write_rows(path, TrialRow, rows)


def read_trials(path: Path) -> pd.DataFrame:
    """trials.csv: one row per trial, sorted by number; absent optional columns are NaN/''."""
    path = Path(path)
    out = _read_rows(path, TrialRow, HINT_BEST)
    if out["number"].isna().any():
        raise StudyError(f"{path.name} at {path}: every trial needs a number")
    out["number"] = out["number"].astype(int)
    out["state"] = out["state"].str.upper()
    return out.sort_values("number", kind="stable").reset_index(drop=True)


def write_curves(path: Path, rows: Iterable[CurveRow | Mapping[str, Any]]) -> None:
    _write_rows(path, CurveRow, rows)


def read_curves(path: Path) -> pd.DataFrame:
    """curves.csv: tune scores per (role, step), sorted."""
    path = Path(path)
    out = _read_rows(path, CurveRow, HINT_BEST)
    out["role"] = out["role"].str.lower()
    return out.sort_values(["role", "step"], kind="stable").reset_index(drop=True)
