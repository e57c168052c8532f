"""The exported student as an MLflow pyfunc model: the predictor, its weights, its settings.

    mlflow.pyfunc.load_model("models:/kd-qa-student-default@champion").predict(
        pd.DataFrame({"question": [...], "context": [...]}))   # -> answer, score, start, end
    mlflow models serve -m models:/kd-qa-student-default@champion --env-manager local

The model folder (safetensors + tokenizer) is an artifact, the windowing/answer settings
are the model config, and the `study` package travels as code_paths, so the model loads
where the project is not installed (with the pinned requirements).

A request's windows are read in batches of `batch_size` (eval.batch_size). Under MLflow's
scoring server, whose time limit per request is MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
(60 s unless set), a request that cannot finish in time stops at a deadline just before that
limit and answers HTTP 504 with a JSON error that says how far it got and how many rows to
send, instead of the server's plain-text 504 while the computation goes on.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModelContext

from study.data import validate_records
from study.errors import StudyError
from study.qa import OutOfTime, QASettings, QuestionAnswerer

if TYPE_CHECKING:  # the served model imports this module; it needs no tracking code
    from study.tracking import RunHandle

CHAMPION = "champion"
# What the predictor imports; the weights and tokenizer are artifacts, not code.
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas",
                "pyyaml", "tqdm")
EXAMPLE = pd.DataFrame({
    "question": ["Which city is the capital of France?"],
    "context": ["Paris is the capital and largest city of France, on the Seine."],
})


class BadRequest(MlflowException):
    """A record the model cannot answer: MLflow's scoring server replies 400 with the message
    (INVALID_PARAMETER_VALUE), never 200 with a made-up or NaN answer."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class OutOfRequestTime(MlflowException):
    """The request's rows could not be answered within the scoring server's limit: HTTP 504
    with this message as JSON (DEADLINE_EXCEEDED)."""

    def __init__(self, message: str):
        super().__init__(message, error_code=DEADLINE_EXCEEDED)


def request_deadline(started: float) -> tuple[float | None, float | None]:
    """(deadline, limit): the scoring server's limit, when one is set (`mlflow models serve`
    always sets it for its workers), less a margin for the answers' post-processing and the
    response; (None, None) elsewhere (pyfunc.load_model in a script has no limit)."""
    if not MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.is_set():
        return None, None
    limit = float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
    return started + limit - max(2.0, 0.1 * limit), limit


def checked_records(frame: pd.DataFrame) -> list[dict]:
    """The rows as records, refused unless each has a non-blank `question` and `context`
    string (the same validator as `study prepare` and `study predict --data`)."""
    missing = [c for c in ("question", "context") if c not in frame.columns]
    if missing:
        raise BadRequest(f"missing column(s) {', '.join(missing)}")
    for column in ("question", "context"):
        rows = [i for i, v in enumerate(frame[column]) if not isinstance(v, str)]
        if rows:
            raise BadRequest(f"{column} must be a string (rows {_rows(rows)})")
    records = [{"id": f"row {i}", "question": q, "context": c,
                "answers": {"text": [], "answer_start": []}}
               for i, (q, c) in enumerate(zip(frame["question"], frame["context"]))]
    try:
        validate_records(records, "request")
    except StudyError as exc:
        raise BadRequest(str(exc)) from None
    return records


def _rows(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


class QuestionAnsweringModel(mlflow.pyfunc.PythonModel):
    """DataFrame of `question`, `context` in; `answer`, `score`, `start`, `end` out.

    The type hints are the pandas ones MLflow accepts without inferring a schema from them
    (the logged signature is the schema), so loading the model prints no "add type hints"
    warning."""

    def load_context(self, context: PythonModelContext) -> None:
        self.answerer = QuestionAnswerer.from_pretrained(
            context.artifacts["model"], QASettings(**(context.model_config or {})))

    def predict(self, context: PythonModelContext | None, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        started = time.monotonic()
        deadline, limit = request_deadline(started)
        records = checked_records(pd.DataFrame(model_input))
        try:
            spans = self.answerer.predict([r["question"] for r in records],
                                          [r["context"] for r in records], deadline=deadline)
        except OutOfTime as exc:
            rows = max(1, int(len(records) * exc.done / exc.total * 0.8))
            raise OutOfRequestTime(
                f"request: {len(records)} rows ({exc.total} windows) not answered within the "
                f"scoring server's limit of {limit:g} s (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT): "
                f"{exc.done} windows read in {time.monotonic() - started:.0f} s. Send at most "
                f"about {rows} rows per request, or raise the limit") from None
        unanswered = [i for i, s in enumerate(spans) if not math.isfinite(s.score)]
        if unanswered:  # no window held any context token: there is no span to give
            raise BadRequest(f"no answer span found in the context (rows {_rows(unanswered)})")
        return answers_frame(spans)


def answers_frame(spans) -> pd.DataFrame:
    return pd.DataFrame({"answer": [s.text for s in spans],
                         "score": [float(s.score) for s in spans],
                         "start": [int(s.start) for s in spans],
                         "end": [int(s.end) for s in spans]})


def pinned_requirements() -> list[str]:
    # Explicit pins: mlflow's inference from the wrapper would miss torch's CPU/GPU choice
    # and assume torchvision. A local build (torch 2.13.0+cpu) pins its public version.
    pins = []
    for pkg in REQUIREMENTS:
        try:
            pins.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def _code_copy(tmp: Path) -> Path:
    """The study package without its data and caches (the predictor needs neither)."""
    src = Path(__file__).resolve().parent
    dst = tmp / "study"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "data", "*.pyc"))
    return dst


def log_pyfunc(handle: RunHandle, model_dir: Path, settings: QASettings,
               registered_name: str | None = None):
    """Log (and optionally register) the model in the run `handle`; returns ModelInfo."""
    answerer = QuestionAnswerer.from_pretrained(str(model_dir), settings, device="cpu")
    example_out = answers_frame(answerer.predict(list(EXAMPLE["question"]),
                                                 list(EXAMPLE["context"])))
    signature = mlflow.models.infer_signature(EXAMPLE, example_out)
    with tempfile.TemporaryDirectory() as tmp:
        return handle.log_model(
            mlflow.pyfunc, name="model", python_model=QuestionAnsweringModel(),
            artifacts={"model": str(model_dir)}, model_config=dataclasses.asdict(settings),
            code_paths=[str(_code_copy(Path(tmp)))], signature=signature,
            input_example=EXAMPLE, pip_requirements=pinned_requirements(),
            registered_model_name=registered_name)


# ------------------------------------------------------------------ what the registry shows
@dataclasses.dataclass(frozen=True)
class ModelCard:
    """A model version's description (Markdown, rendered by the registry's pages) and tags."""

    description: str
    tags: dict[str, str]


# The description's last paragraph: a placeholder until `study seeds` has run, then the
# interval (seeds_paragraph). `seeds` runs after `best`, so it is the one that can say it.
SEEDS_HEADING = "**Over seeds**"
SEEDS_PENDING = (f"{SEEDS_HEADING}: not yet measured. `study seeds` re-trains this setting with "
                 "several seeds and adds its dev F1 with a 95% interval here (and in the report).")


def model_card(profile: str, experiment: str, report: str) -> ModelCard:
    """What the registered model (all its versions) shows."""
    return ModelCard(model_description(profile),
                     {"project": "kd-qa-study", "profile": profile,
                      "mlflow_experiment": experiment, "report": report})


def model_description(profile: str) -> str:
    return (f"The distilled extractive-QA student of kd-qa-study (profile `{profile}`): the "
            "searched setting's student, distilled from the fine-tuned teacher. The alias "
            f"`{CHAMPION}` names the version `study best` registered last (the study's best "
            "trial by tune F1); each version says which trial, its settings, its scores and "
            "where its runs and report are. Load it with "
            f"`mlflow.pyfunc.load_model(\"models:/<name>@{CHAMPION}\")`: a DataFrame of "
            "`question`, `context` in; `answer`, `score`, `start`, `end` out.")


def version_card(*, study_name: str, trial: int, params: dict[str, float], dev: dict,
                 tune_f1: float, seed: int, run_id: str, trial_run_id: str | None,
                 report: str, profile: str, git_commit: str) -> ModelCard:
    """What `study best` registers: the trial, its searched params, its dev scores (one
    training, the study's seed), the runs it came from and the report."""
    setting = ", ".join(f"{k} = {v:.4g}" for k, v in params.items())
    description = (
        f"Trial {trial} of study `{study_name}`, the best by tune F1 ({tune_f1:.2f}): "
        f"{setting}.\n\n"
        f"Dev exact match / F1 of this training (seed {seed}): "
        f"{dev['exact_match']:.2f} / {dev['f1']:.2f}.\n\n"
        f"Runs: `best` {run_id}" + (f", the trial {trial_run_id}" if trial_run_id else "")
        + f". Report: `{report}`.\n\n{SEEDS_PENDING}")
    tags = {"study_name": study_name, "trial": str(trial), "profile": profile,
            "mlflow_run_id": run_id, "trial_run_id": trial_run_id or "",
            **{k: f"{v:.6g}" for k, v in params.items()},
            "dev_exact_match": f"{dev['exact_match']:.2f}", "dev_f1": f"{dev['f1']:.2f}",
            "tune_f1": f"{tune_f1:.2f}", "seed": str(seed), "report": report,
            "git_commit": git_commit}
    return ModelCard(description, tags)


def seeds_paragraph(arm: dict) -> str:
    f1, em = arm["mean"]["f1"], arm["mean"]["exact_match"]
    (lo, hi), seeds = arm["ci95"]["f1"], arm["seeds"]
    return (f"{SEEDS_HEADING} ({', '.join(map(str, seeds))}; this setting re-trained with each "
            f"seed by `study seeds`): dev F1 {f1:.2f}, 95% CI [{lo:.2f}, {hi:.2f}] over seeds and "
            f"questions; exact match {em:.2f}. The comparisons with the baseline and the "
            "authors' setting are in the report.")


def record_seeds(client, name: str, study_name: str, trial: int, arm: dict) -> str | None:
    """Put the searched arm's interval over seeds (seeds.json's `distilled`) on the champion
    version, when that version is this study's trial; returns the version, else None (the
    champion is another trial's, or there is none: nothing is claimed about it)."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    if version.tags.get("study_name") != study_name or version.tags.get("trial") != str(trial):
        return None
    kept = (version.description or "").split(SEEDS_HEADING)[0].rstrip()
    client.update_model_version(name, version.version,
                                description=f"{kept}\n\n{seeds_paragraph(arm)}".lstrip())
    (lo, hi) = arm["ci95"]["f1"]
    for key, value in {"seeds": ",".join(map(str, arm["seeds"])),
                       "dev_f1_seeds_mean": f"{arm['mean']['f1']:.2f}",
                       "dev_f1_seeds_ci95": f"[{lo:.2f}, {hi:.2f}]"}.items():
        client.set_model_version_tag(name, version.version, key, value)
    return str(version.version)


def register_champion(handle: RunHandle, model_dir: Path, settings: QASettings, name: str,
                      card: ModelCard | None = None, model: ModelCard | None = None) -> str:
    """Log the pyfunc model into the run `handle`, register it as `name` (`model`: the
    registered model's description and tags) as a version described by `card`, point
    `champion` at it."""
    info = log_pyfunc(handle, model_dir, settings, registered_name=name)
    version_ = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    if model is not None:
        client.update_registered_model(name, description=model.description)
        for key, value in model.tags.items():
            client.set_registered_model_tag(name, key, value)
    if card is not None:
        client.update_model_version(name, version_, description=card.description)
        for key, value in card.tags.items():
            client.set_model_version_tag(name, version_, key, value)
    client.set_registered_model_alias(name, CHAMPION, version_)
    return version_
