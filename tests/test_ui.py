"""`study ui`: the real MLflow UI on the project's store, on 127.0.0.1. It prints the study's
runs page (model-training view, the study's columns) only once the server answers, and takes
the server down with it however it ends: SIGTERM, Ctrl-C, or SIGKILL (then the guard does)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import study_command

from study.tracking import EXPERIMENT_TAGS
from study.ui import SHARED_VIEW_TAG, VIEW_KEY, port_free
from study.ui_server import WORKFLOW_KEY

pytestmark = pytest.mark.slow
WAIT_S = 150  # the server answers in ~15 s at load 8 on two cores
GONE_S = 15  # the guard's SIGTERM wait (5 s), then SIGKILL; the tree ends well before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting for its reaper has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def logged_run(port: int, experiment_id: str) -> str:
    """A run logged through the server, its metrics in the order a training logs them:
    system metrics first (sampled from the run's start), the objective late."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"http://127.0.0.1:{port}")
    run_id = client.create_run(experiment_id, run_name="ordered").info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in [
        ("system/cpu_utilization_percentage", 0.0), ("loss", 1.0), ("tune_exact_match", 2.0),
        ("tune_f1", 3.0), ("dev_f1", 4.0)]])
    return run_id


def lines_of(proc: subprocess.Popen) -> queue.Queue:
    """The process's output lines, read by a thread, so a silent process cannot hang a test."""
    lines: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for(lines: queue.Queue, pattern: str, seen: list[str]) -> re.Match:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    pytest.fail(f"no line matching {pattern!r} in {WAIT_S} s:\n{''.join(seen)}")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_ui_answers_at_the_printed_url_and_goes_down_with_its_server(tmp_path, stop_signal):
    port = free_port()
    cmd, env = study_command("ui", "--port", str(port))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    started: set[int] = set()
    try:
        seen: list[str] = []
        lines = lines_of(proc)
        match = wait_for(lines, rf"http://127\.0\.0\.1:{port}/#/experiments/(\d+)/runs"
                         r"\?workflowType=machine_learning&viewStateShareKey=(\w+)", seen)
        wait_for(lines, "optuna-dashboard sqlite:///artifacts/smoke/search/optuna.db", seen)
        # Printed once the server answers: the first request succeeds, no retry.
        status, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"<html" in page.lower()
        api = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get?experiment_id={match[1]}"
        exp = json.loads(get(api)[1])["experiment"]
        assert exp["name"] == "kd-qa-smoke"
        # The view the URL names holds the study's columns.
        assert match[2] == VIEW_KEY
        tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
        view = json.loads(tags[SHARED_VIEW_TAG + VIEW_KEY])
        first = ["metrics.`tune_f1`", "metrics.`dev_f1`", "params.`temperature`",
                 "params.`alpha_ce`", "params.`alpha_squad`", "tags.`optuna_state`"]
        assert view["selectedColumns"][:6] == view["columnOrder"][:6] == first
        assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`tune_f1`", False)
        parallel = view["compareRunCharts"][0]
        assert parallel["type"] == "PARALLEL" and parallel["selectedMetrics"] == ["tune_f1"]
        for key, value in EXPERIMENT_TAGS.items():
            assert tags[key] == value
        # Every page of the UI sets the training view before the app reads it.
        assert f'g("{WORKFLOW_KEY}")===null'.encode() in page
        assert b'"\\"machine_learning\\""' in page

        # A run's metrics come objective first, system metrics last, whatever order they
        # were logged in (what the Compare page colours by); values as stored.
        run_id = logged_run(port, match[1])
        got = json.loads(get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/get"
                             f"?run_id={run_id}")[1])["run"]["data"]["metrics"]
        assert [(m["key"], m["value"]) for m in got] == [
            ("tune_f1", 3.0), ("dev_f1", 4.0), ("tune_exact_match", 2.0), ("loss", 1.0),
            ("system/cpu_utilization_percentage", 0.0)]
        found = post(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search",
                     {"experiment_ids": [match[1]]})["runs"]
        assert [m["key"] for m in found[0]["data"]["metrics"]][:2] == ["tune_f1", "dev_f1"]
        query = 'query { mlflowGetRun(input: {runId: "%s"}) { run { data { metrics { key } } } } }'
        graphql = post(f"http://127.0.0.1:{port}/graphql", {"query": query % run_id})
        assert [m["key"] for m in graphql["data"]["mlflowGetRun"]["run"]["data"]["metrics"]] \
            == ["tune_f1", "dev_f1", "tune_exact_match", "loss", "system/cpu_utilization_percentage"]

        started = descendants(proc.pid)
        # The guard and the server: no uvicorn workers, job runner or huey consumers.
        assert len(started) == 2, [Path(f"/proc/{p}/cmdline").read_bytes() for p in started]
        os.kill(proc.pid, stop_signal)  # study ui alone, as `kill PID` or Ctrl-C reaches it
        proc.wait(timeout=60)
        left = [pid for pid in started if alive(pid)]
        assert left == [], f"processes left running: {left}"
        assert port_free(port), f"port {port} still taken"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        for pid in [proc.pid, *started]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


def start_ui(cwd: Path, port: int) -> tuple[subprocess.Popen, queue.Queue, list[str]]:
    cmd, env = study_command("ui", "--port", str(port))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[str] = []
    lines = lines_of(proc)
    wait_for(lines, rf"http://127\.0\.0\.1:{port}/#/experiments/\d+/runs", seen)
    return proc, lines, seen


def gone_within(pids: set[int], seconds: float) -> list[int]:
    """The pids still running after `seconds` (polled: processes end on their own time)."""
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_ui_killed_with_sigkill_leaves_no_server_and_its_port_starts_again(tmp_path):
    """SIGKILL runs no handler of `study ui`: the guard sees the pipe close and takes the
    server down; the same port then serves a new `study ui`."""
    port = free_port()
    proc, _, _ = start_ui(tmp_path, port)
    started = descendants(proc.pid)
    again = None
    try:
        assert started
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert gone_within(started, GONE_S) == [], "processes outlived study ui"
        assert port_free(port), f"port {port} still taken"

        again, _, _ = start_ui(tmp_path, port)
        status, _ = get(f"http://127.0.0.1:{port}/health")
        assert status == 200
        restarted = descendants(again.pid)
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=60)
        assert gone_within(restarted, GONE_S) == []
    finally:
        for p in [proc, again]:
            if p is None:
                continue
            for pid in [p.pid, *descendants(p.pid)]:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            p.wait(timeout=30)
