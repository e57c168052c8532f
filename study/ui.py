"""`study ui`: the MLflow UI on the project's tracking store, bound to 127.0.0.1.

It prints the address of the study's runs page once the server answers: MLflow 3's
model-training view (`workflowType=machine_learning`; the UI otherwise opens in its GenAI
mode) with the study's columns already chosen (a shared view, below), and the
optuna-dashboard command for the same study. The server runs in its own process group and
goes down with `study ui` (Ctrl-C or SIGTERM), workers included.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

from study.config import Config
from study.errors import StudyError
from study.tracking import Tracker

START_WAIT_S = 120  # mlflow ui takes ~25 s on 2 busy cores; this only bounds a hang
STOP_WAIT_S = 10
# A view of the runs page that MLflow's UI loads from an experiment tag
# (`mlflow.sharedViewState.<key>`, what its "Share" button writes): the columns a user would
# otherwise pick among ~100. Keys are MLflow's canonical column names.
VIEW_KEY = "study"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
VIEW_COLUMNS = ["metrics.`tune_f1`", "metrics.`dev_f1`", "metrics.`dev_exact_match`",
                "params.`temperature`", "params.`alpha_ce`", "params.`alpha_squad`",
                "params.`learning_rate`", "tags.`optuna_state`", "attributes.`Description`"]


def runs_url(port: int, experiment_id: str, view_key: str | None = VIEW_KEY) -> str:
    query = {"workflowType": "machine_learning"}
    if view_key:
        query["viewStateShareKey"] = view_key
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def share_study_view(tracker: Tracker) -> None:
    """The study's columns as the experiment's shared view `VIEW_KEY` (plain JSON, which the
    UI reads as it reads its own compressed form)."""
    view = {"selectedColumns": VIEW_COLUMNS}  # the rest (order, filters) stays the UI's default
    tracker.client.set_experiment_tag(tracker.experiment_id, SHARED_VIEW_TAG + VIEW_KEY,
                                      json.dumps(view))


def port_free(port: int) -> bool:
    with socket.socket() as s:
        # Connections just closed linger in TIME_WAIT; only a listening socket takes the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until_serving(server: subprocess.Popen, port: int) -> None:
    """Until the server answers HTTP (its /health), or it exits."""
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise StudyError(f"mlflow ui exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        time.sleep(0.5)
    raise StudyError(f"mlflow ui did not answer on port {port} in {START_WAIT_S} s")


def stop(server: subprocess.Popen) -> None:
    """The server's whole process group: mlflow ui, its web server and their workers."""
    for sig, wait in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, STOP_WAIT_S)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break  # nothing left in the group
        try:
            server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.2)  # workers leave just after their parent


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run()'s `finally`, like Ctrl-C


def run(cfg: Config, port: int = 5000) -> None:
    uri = cfg.tracking.uri
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "file:")):
        raise StudyError(f"tracking.uri {uri} is a server already: open it in a browser")
    if not port_free(port):
        raise StudyError(f"port {port} on 127.0.0.1 is in use: choose another with --port")
    tracker = Tracker(cfg)
    share_study_view(tracker)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--default-artifact-root", cfg.tracking.artifact_location,
           "--host", "127.0.0.1", "--port", str(port)]
    print("starting: " + " ".join(cmd), flush=True)
    previous = signal.signal(signal.SIGTERM, _terminated)
    # Its own process group: Ctrl-C reaches `study ui` alone, which takes the group down.
    server = subprocess.Popen(cmd, start_new_session=True)
    try:
        wait_until_serving(server, port)
        print(f"MLflow UI, {cfg.experiment_name} runs: {runs_url(port, tracker.experiment_id)}\n"
              f"Optuna dashboard of the search: optuna-dashboard {cfg.storage_url}", flush=True)
        if server.wait() != 0:
            raise StudyError(f"mlflow ui exited with code {server.returncode}")
    finally:
        stop(server)
        signal.signal(signal.SIGTERM, previous)
