"""`study ui`: the MLflow UI on the project's tracking store, bound to 127.0.0.1.

It prints the address of the study's runs page once the server answers: the study's parent
run and its trials, best `tune_f1` first, with the objective, the dev scores, the searched
params and each trial's state as the first columns (a shared view, below), in MLflow 3's
model-training view, which every page reached from there keeps (study.ui_server). Then the
optuna-dashboard command for the same study.

The server (study.ui_server: MLflow's app in one uvicorn process, no job runner) runs under
study.guard, in a session of its own, and cannot outlive `study ui`: the guard takes it down
when the pipe held open here closes, which the kernel does however `study ui` ends (Ctrl-C,
SIGTERM, SIGKILL, a crash).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from study.config import Config
from study.errors import StudyError
from study.guard import start_guarded, stop_guarded
from study.storage import absolute_sqlite
from study.tracking import EXPERIMENT_TAGS, STATE_TAG, Tracker

# Measured (README, "study ui"): 8-9 s to the printed address on 2 quiet cores, 34-38 s at
# load 9.6; the limit only bounds a hang, with room for a machine busy with training.
START_WAIT_S = 120
# A view of the runs page that MLflow's UI loads from an experiment tag
# (`mlflow.sharedViewState.<key>`, what its "Share" button writes): the columns a user would
# otherwise pick among ~100, the study's runs only, best first. Keys are MLflow's canonical
# column names. The UI applies its search facets (searchFilter, orderByKey, orderByAsc) and
# its table and chart settings from it; sorted or filtered, it lists runs flat (not folded
# under their parent), so the parent and every trial show at once.
VIEW_KEY = "study"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
OBJECTIVE = "tune_f1"
SCORES = ("tune_f1", "dev_f1", "dev_exact_match")
# A run's metrics as the UI lists them (study.ui_server): what Compare colours by comes first.
METRICS_FIRST = (OBJECTIVE, "dev_f1", "tune_exact_match", "dev_exact_match")
SEARCHED = ("temperature", "alpha_ce", "alpha_squad")


def metric_column(key: str) -> str:
    return f"metrics.`{key}`"


def param_column(key: str) -> str:
    return f"params.`{key}`"


def searched_params(cfg: Config) -> list[str]:
    return [*SEARCHED, *(["learning_rate"] if cfg.search.learning_rate is not None else [])]


def study_filter(study_name: str | None) -> str:
    """The study's parent run and trials: `best` carries the study's name too, as a run of
    its own (a copy of one trial)."""
    if not study_name:
        return ""
    quoted = study_name.replace("'", "\\'")
    return f"tags.study_name = '{quoted}' AND tags.role != 'best'"


def study_view(cfg: Config, study_name: str | None) -> dict:
    """The shared view: MLflow's UI state keys (selectedColumns, columnOrder, ...) and search
    facets. The columns come first, right after the run's name and creation time (the
    Dataset column, which MLflow shows before them, last); no Description column: the
    study's own is a Markdown table, which a cell shows raw (its run page renders it)."""
    columns = ([metric_column(k) for k in SCORES[:2]]
               + [param_column(k) for k in searched_params(cfg)]
               + [f"tags.`{STATE_TAG}`", metric_column(SCORES[2]), "attributes.`Dataset`"])
    charts, sections = study_charts(cfg)
    return {"selectedColumns": columns, "columnOrder": columns,
            "searchFilter": study_filter(study_name),
            "orderByKey": metric_column(OBJECTIVE), "orderByAsc": False,
            "runsHiddenMode": "SHOW_ALL",
            "compareRunCharts": charts, "compareRunSections": sections}


OBJECTIVE_SECTION = "study-objective"


def _card(uuid: str, kind: str, **fields) -> dict:
    """One of MLflow's chart cards (RunsChartsCardConfig) in the objective's section."""
    return {"uuid": uuid, "type": kind, "metricSectionId": OBJECTIVE_SECTION,
            "isGenerated": False, "deleted": False, "runsCountToCompare": 100, **fields}


def _line(uuid: str, key: str) -> dict:
    return _card(uuid, "LINE", metricKey=key, selectedMetricKeys=[key], displayName=key,
                 lineSmoothness=0, xAxisKey="step", xAxisScaleType="linear", scaleType="linear",
                 yAxisKey="metric", yAxisExpressions=[], ignoreOutliers=False,
                 useGlobalXaxisKey=False, useGlobalLineSmoothing=True, selectedXAxisMetricKey="",
                 range={})


def _bar(uuid: str, key: str) -> dict:
    return _card(uuid, "BAR", metricKey=key, displayName=key)


def _sections(title: str, *generated: str) -> list[dict]:
    """The objective's section first, then MLflow's own (which the UI fills with every
    metric no chart shows yet, by its names: "Model metrics", "System metrics")."""
    return [{"uuid": uuid, "name": name, "display": True, "isReordered": uuid == OBJECTIVE_SECTION,
             "deleted": False, "isGenerated": uuid != OBJECTIVE_SECTION}
            for uuid, name in [(OBJECTIVE_SECTION, title),
                               *((f"study-{n.split()[0].lower()}", n) for n in generated)]]


def study_charts(cfg: Config) -> tuple[list[dict], list[dict]]:
    """The runs page's chart view (MLflow 3's comparison of the runs shown): the objective
    first (the searched params in parallel coordinates coloured by tune_f1, their last axis;
    tune_f1 over training steps; dev_f1), then model metrics, then system metrics."""
    charts = [_card("study-parallel", "PARALLEL", selectedParams=searched_params(cfg),
                    selectedMetrics=[OBJECTIVE], showAllRuns=True),
              _line("study-tune-f1", OBJECTIVE), _bar("study-dev-f1", "dev_f1")]
    return charts, _sections(f"{OBJECTIVE} (the objective) and dev_f1", "Model metrics",
                             "System metrics")


def trial_charts() -> dict:
    """A trial's Model metrics tab (the UI's chart state of a run page): tune F1 and exact
    match over training steps, then the final dev scores, before the other model metrics
    (MLflow would sort them by name: the single dev points first, tune_f1 near the end)."""
    charts = [_line("study-tune-f1", OBJECTIVE), _line("study-tune-em", "tune_exact_match"),
              _bar("study-dev-f1", "dev_f1"), _bar("study-dev-em", "dev_exact_match")]
    return {"isAccordionReordered": False, "compareRunCharts": charts,
            "compareRunSections": _sections(f"{OBJECTIVE} (the objective) and dev scores",
                                            "Model metrics"),
            "autoRefreshEnabled": True,
            "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0,
                                      "selectedXAxisMetricKey": ""}}


def study_runs(tracker: Tracker, study_name: str | None) -> list[str]:
    """The run ids of the study's parent run and trials."""
    if not study_name:
        return []
    return [r.info.run_id for r in tracker.client.search_runs(
        [tracker.experiment_id], study_filter(study_name), max_results=1000)]


def runs_url(port: int, experiment_id: str, view_key: str | None = VIEW_KEY) -> str:
    query = {"workflowType": "machine_learning"}
    if view_key:
        query["viewStateShareKey"] = view_key
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def latest_study(tracker: Tracker) -> str | None:
    """The study of the experiment's newest parent run (a profile's experiment may hold
    several studies; the newest is the one the pipeline works on)."""
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.role = 'study'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.tags.get("study_name") if runs else None


def share_study_view(cfg: Config, tracker: Tracker) -> tuple[str | None, dict]:
    """The study's view as the experiment's shared view `VIEW_KEY` (plain JSON, which the UI
    reads as it reads its own compressed form), and the experiment's view tags (for
    experiments created before they were set at creation). Returns the study's name and
    the view."""
    study_name = latest_study(tracker)
    view = study_view(cfg, study_name)
    tags = {**EXPERIMENT_TAGS, SHARED_VIEW_TAG + VIEW_KEY: json.dumps(view)}
    for key, value in tags.items():
        tracker.client.set_experiment_tag(tracker.experiment_id, key, value)
    return study_name, view


def port_free(port: int) -> bool:
    with socket.socket() as s:
        # Connections just closed linger in TIME_WAIT; only a listening socket takes the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until_serving(server: subprocess.Popen, port: int, limit_s: float = START_WAIT_S) -> None:
    """Until the server answers HTTP (its /health), or it exits."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise StudyError(f"the MLflow server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        time.sleep(0.25)
    raise StudyError(f"the MLflow server did not answer on port {port} in {limit_s:.0f} s")


def server_command(cfg: Config, port: int, request_log: bool = False,
                   runs_view: tuple[str, dict] | None = None,
                   run_ids: list[str] = ()) -> list[str]:
    """study.ui_server's command line. `runs_view` (experiment id, view): the runs page a
    browser first sees, and sees again whenever it opens the printed URL (so the runs page
    reached back from a trial, or from the side bar, is the study's); `run_ids`: the runs
    whose Model metrics tab leads with the objective (trial_charts)."""
    location = cfg.tracking.artifact_location
    root = location if "://" in location else Path(location).resolve().as_uri()
    view = ["--runs-view", runs_view[0], VIEW_KEY, json.dumps(runs_view[1])] if runs_view else []
    charts = (["--run-charts", json.dumps({"runs": list(run_ids), "charts": trial_charts()})]
              if run_ids else [])
    return [sys.executable, "-m", "study.ui_server",
            "--backend-store-uri", absolute_sqlite(cfg.tracking.uri),
            "--default-artifact-root", root, "--port", str(port),
            "--metrics-first", *METRICS_FIRST,
            *(["--request-log"] if request_log else []), *view, *charts]


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run()'s `finally`, like Ctrl-C


def run(cfg: Config, port: int = 5000, request_log: bool = False) -> None:
    uri = cfg.tracking.uri
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "file:")):
        raise StudyError(f"tracking.uri {uri} is a server already: open it in a browser")
    if not port_free(port):
        raise StudyError(f"port {port} on 127.0.0.1 is in use: choose another with --port")
    tracker = Tracker(cfg)  # creates the store and experiment, re-points a copied store
    study_name, view = share_study_view(cfg, tracker)
    command = server_command(cfg, port, request_log, (tracker.experiment_id, view),
                             study_runs(tracker, study_name))
    print("starting: " + " ".join(command[:command.index("--metrics-first")]), flush=True)
    previous = signal.signal(signal.SIGTERM, _terminated)
    t0 = time.monotonic()
    guard, write_end = start_guarded(command)
    try:
        wait_until_serving(guard, port)
        shown = f"study {study_name}" if study_name else "no study yet"
        print(f"MLflow UI ({time.monotonic() - t0:.1f} s), {cfg.experiment_name}, {shown}: "
              f"{runs_url(port, tracker.experiment_id)}\n"
              f"Optuna dashboard of the search: optuna-dashboard {cfg.storage_url}", flush=True)
        if guard.wait() != 0:
            raise StudyError(f"the MLflow server exited with code {guard.returncode}")
    finally:
        stop_guarded(guard, write_end)
        signal.signal(signal.SIGTERM, previous)
