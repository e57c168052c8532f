"""`study ui`: the real MLflow UI on the project's store, on 127.0.0.1, and the address of the
study's runs page it prints."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from conftest import study_command

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_ui_prints_the_runs_page_of_the_profiles_experiment(tmp_path):
    port = free_port()
    cmd, env = study_command("ui", "--port", str(port))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []  # MLflow logs its store creation first
        while not any("starting:" in line for line in lines) and len(lines) < 50:
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        match = re.search(rf"http://127\.0\.0\.1:{port}/#/experiments/(\d+)/runs", text)
        assert match, text
        assert "optuna-dashboard sqlite:///artifacts/smoke/search/optuna.db" in text
        api = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get?experiment_id={match[1]}"
        deadline, last = time.time() + 90, None
        while time.time() < deadline:
            assert proc.poll() is None, "mlflow ui exited"
            try:
                exp = get_json(api)["experiment"]
                break
            except OSError as exc:  # not listening yet
                last = exc
                time.sleep(1)
        else:
            pytest.fail(f"the UI did not answer in 90 s: {last}")
        assert exp["name"] == "kd-qa-smoke"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
