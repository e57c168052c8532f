"""`study ui`: the MLflow UI on the project's tracking store, bound to 127.0.0.1.

It prints the address of the study's runs page (the UI otherwise opens on its GenAI
overview) and the optuna-dashboard command for the same study.
"""

from __future__ import annotations

import subprocess
import sys

from study.config import Config
from study.errors import StudyError
from study.tracking import Tracker


def runs_url(port: int, experiment_id: str) -> str:
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs"


def run(cfg: Config, port: int = 5000) -> None:
    uri = cfg.tracking.uri
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "file:")):
        raise StudyError(f"tracking.uri {uri} is a server already: open it in a browser")
    experiment_id = Tracker(cfg).experiment_id
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--default-artifact-root", cfg.tracking.artifact_location,
           "--host", "127.0.0.1", "--port", str(port)]
    print(f"MLflow UI, {cfg.experiment_name} runs: {runs_url(port, experiment_id)}\n"
          f"Optuna dashboard of the search: optuna-dashboard {cfg.storage_url}\n"
          "starting: " + " ".join(cmd), flush=True)
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as exc:
        raise StudyError(f"mlflow ui exited with code {exc.returncode}") from None
