"""The exported student as an MLflow pyfunc model: the predictor, its weights, its settings.

    mlflow.pyfunc.load_model("models:/kd-qa-student-default@champion").predict(
        pd.DataFrame({"question": [...], "context": [...]}))   # -> answer, score, start, end
    mlflow models serve -m models:/kd-qa-student-default@champion --env-manager local

The model folder (safetensors + tokenizer) is an artifact, the windowing/answer settings
are the model config, and the `study` package travels as code_paths, so the model loads
where the project is not installed (with the pinned requirements).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModelContext

from study.data import validate_records
from study.errors import StudyError
from study.qa import QASettings, QuestionAnswerer

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
        records = checked_records(pd.DataFrame(model_input))
        spans = self.answerer.predict([r["question"] for r in records],
                                      [r["context"] for r in records])
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


def register_champion(handle: RunHandle, model_dir: Path, settings: QASettings, name: str) -> str:
    """Log the pyfunc model into the run `handle`, register it as `name`, point `champion` at it."""
    info = log_pyfunc(handle, model_dir, settings, registered_name=name)
    version_ = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version_)
    return version_
