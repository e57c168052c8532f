"""`study ui`: the MLflow UI on the project's tracking store, bound to 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

from study.config import Config
from study.errors import StudyError


def run(cfg: Config, port: int = 5000) -> None:
    uri = cfg.tracking.uri
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "file:")):
        raise StudyError(f"tracking.uri {uri} is a server already: open it in a browser")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--default-artifact-root", cfg.tracking.artifact_location,
           "--host", "127.0.0.1", "--port", str(port)]
    print("starting: " + " ".join(cmd), flush=True)
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as exc:
        raise StudyError(f"mlflow ui exited with code {exc.returncode}") from None
