"""The MLflow tracking server that `study ui` runs: MLflow's own app in one uvicorn process.

    python -m study.ui_server --backend-store-uri URI --default-artifact-root URI --port N
                              [--request-log]

What `mlflow server` does, minus what the UI of a local study does not need, plus one thing
it cannot do:

- one process: no uvicorn supervisor and workers (`mlflow server` starts 4), no job runner
  and no huey consumers (MLflow 3's GenAI jobs: scorers, trace roll-ups; they start in
  sessions of their own and outlive a killed parent), so there is nothing to orphan and
  start-up is one import of MLflow instead of three;
- no request log unless asked (`--request-log`);
- the model-training view as the UI's default. MLflow 3.17's UI chooses between its GenAI and
  model-training pages from a per-browser setting (localStorage `mlflow.workflowType_v1`,
  default GenAI; the experiment tag `mlflow.experimentKind` is read only where
  workflow-based navigation is off, and 3.17 builds it on). A `?workflowType=` URL parameter
  holds for that page only: the UI's own links (a run, compare, the registry) drop it. So the
  UI's page carries one line, run before the app reads the setting, that makes the training
  view the setting when the browser has none or when the address asks for it (the URL
  `study ui` prints does): every page reached from there stays in it. The UI's own switch
  still changes it, and that choice sticks.
- a run's metrics listed objective first and system metrics last (`--metrics-first`). The
  store lists them as first logged, so MLflow's system metrics (sampled from the run's start)
  lead, and the legacy Compare page colours its parallel-coordinates plot by the first metric
  the compared runs share: `system/cpu_utilization_percentage`. The order is the only change
  to MLflow's answers (`runs/get`, `runs/search`, GraphQL); values and keys are as
  stored.

The environment is the one `mlflow server` gives its workers (mlflow.server._run_server),
set from MLflow's own names; `study.guard` runs this process and ends it with its parent.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
import warnings

# MLflow UI's settings, kept per browser in localStorage (its useLocalStorage hook stores
# `${key}_v${version}` as JSON; a page's saved state is `MLflowLocalStorage-1.1-<scope>-
# ReactComponentState`). Each is set where the browser has none, and, for those with an
# address fragment, also when the address holds it (the URL `study ui` prints does):
WORKFLOW_KEY = "mlflow.workflowType_v1"
TRAINING_VIEW = "machine_learning"
UI_DEFAULTS = {
    # the training view (see above)
    WORKFLOW_KEY: (TRAINING_VIEW, "workflowType=" + TRAINING_VIEW),
    # 3.17 opens its assistant panel by itself the first time a browser loads a local
    # server's UI, over a quarter of a 1,366 px screen; its button stays
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": (True, None),
    # and the registry's first page opens a promotion of the registry UI it already shows
    "_mlflow_model_registry_promo_modal_dismissed_v1": (True, None),
}


def runs_page_key(experiment_id: str) -> str:
    """Where the UI keeps an experiment's runs page as the user left it (columns, sort,
    filter, charts): what its "Override saved view" writes."""
    return f"MLflowLocalStorage-1.1-ExperimentPage-{json.dumps([experiment_id])}-ReactComponentState"


def run_charts_key(run_id: str) -> str:
    """Where the UI keeps a run page's Model metrics charts as the user left them."""
    return f"MLflowLocalStorage-1.1-RunPage-{run_id}-model-chartUIState"


def defaults_script(extra: dict[str, tuple] | None = None) -> str:
    """One inline script that sets each default (key -> (value, address fragment or None)).
    Equal values are written once (a study's runs share one chart layout)."""
    values: list[str] = []
    lines = []
    for key, (value, asked) in {**UI_DEFAULTS, **(extra or {})}.items():
        text = json.dumps(value)
        if text not in values:
            values.append(text)
        unset = f"g({json.dumps(key)})===null"
        if asked:
            unset += f"||h.indexOf({json.dumps(asked)})>=0"
        lines.append(f"if({unset})s({json.dumps(key)},v[{values.index(text)}]);")
    body = (f"var v={json.dumps(values)},h=location.hash,"
            "g=function(k){return localStorage.getItem(k)},"
            "s=function(k,x){localStorage.setItem(k,x)};" + "".join(lines))
    # `</` cannot end the script early: the values are escaped for an HTML <script>.
    return "<script>try{" + body.replace("</", "<\\/") + "}catch(e){}</script>"


def server_environment(backend_store_uri: str, artifact_root: str) -> dict[str, str]:
    """What mlflow.server._run_server exports to its uvicorn workers, for this server."""
    from mlflow.environment_variables import (
        _MLFLOW_IN_JOB_EXECUTOR,
        _MLFLOW_SERVER_BOOT_ID,
        _MLFLOW_SGI_NAME,
        MLFLOW_ENABLE_WORKSPACES,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION,
    )
    from mlflow.server.constants import (
        ARTIFACT_ROOT_ENV_VAR,
        BACKEND_STORE_URI_ENV_VAR,
        REGISTRY_STORE_URI_ENV_VAR,
    )

    return {BACKEND_STORE_URI_ENV_VAR: backend_store_uri,
            REGISTRY_STORE_URI_ENV_VAR: backend_store_uri,
            ARTIFACT_ROOT_ENV_VAR: artifact_root,
            _MLFLOW_SERVER_BOOT_ID.name: uuid.uuid4().hex,
            _MLFLOW_IN_JOB_EXECUTOR.name: "false",
            _MLFLOW_SGI_NAME.name: "uvicorn",
            MLFLOW_ENABLE_WORKSPACES.name: "false",
            # Read by the handlers: job endpoints answer that jobs are off, not time out.
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION.name: "false"}


def with_defaults(index_html: str, script: str) -> str:
    """The UI's page with `script` first in its head: it runs before the app's scripts."""
    head = index_html.find("<head>")
    if head < 0:
        return script + index_html
    at = head + len("<head>")
    return index_html[:at] + script + index_html[at:]


def serve_index_with_defaults(flask_app, script: str) -> None:
    """Replace the Flask view that serves the UI's index.html (endpoint `serve`, MLflow's
    catch-all `/`) by one that adds `script`; every other route is MLflow's."""
    from flask import Response

    index = os.path.join(flask_app.static_folder, "index.html")
    original = flask_app.view_functions["serve"]

    def serve():
        if not os.path.exists(index):
            return original()
        with open(index, encoding="utf-8") as f:
            page = with_defaults(f.read(), script)
        # Never cached: the page is small and a cached copy would outlive a changed default.
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    flask_app.view_functions["serve"] = serve


def metrics_first(metrics: list[dict], first: list[str]) -> list[dict]:
    """`first` in its order, then the other model metrics, then system metrics, each group in
    the store's order."""
    def rank(metric: dict) -> tuple[int, int]:
        key = metric.get("key", "")
        if key in first:
            return 0, first.index(key)
        return (2 if key.startswith("system/") else 1), 0
    return sorted(metrics, key=rank)


def reorder_metrics(body, first: list[str]):
    """Every list of metrics (`"metrics": [{"key": ...}, ...]`) in an answer of MLflow's, at
    any depth (a REST run, a list of runs, a GraphQL run), in metrics_first's order."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key == "metrics" and isinstance(value, list) \
                    and all(isinstance(m, dict) and "key" in m for m in value):
                body[key] = metrics_first(value, first)
            else:
                reorder_metrics(value, first)
    elif isinstance(body, list):
        for item in body:
            reorder_metrics(item, first)
    return body


def order_run_metrics(flask_app, first: list[str]) -> None:
    """Wrap the views the UI reads runs from (get-run, search-runs, and GraphQL, which the
    run page's Overview uses) so each run's metrics come in metrics_first's order. JSON
    answers only; an error passes through as it is."""
    def ordered(view):
        def wrapped(*args, **kwargs):
            response = flask_app.make_response(view(*args, **kwargs))
            if response.status_code != 200 or not response.is_json:
                return response
            response.set_data(json.dumps(reorder_metrics(response.get_json(), first)))
            return response
        return wrapped

    for endpoint in ("_get_run", "_search_runs", "_graphql"):
        flask_app.view_functions[endpoint] = ordered(flask_app.view_functions[endpoint])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="study.ui_server")
    p.add_argument("--backend-store-uri", required=True)
    p.add_argument("--default-artifact-root", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--request-log", action="store_true", help="log every HTTP request")
    p.add_argument("--runs-view", nargs=3, metavar=("EXPERIMENT_ID", "SHARE_KEY", "JSON"),
                   help="the experiment's runs page as a browser first sees it, and as "
                        "an address with viewStateShareKey=SHARE_KEY sets it")
    p.add_argument("--run-charts", metavar="JSON",
                   help='{"runs": [run ids], "charts": chart state}: the Model metrics '
                        "charts of those runs' pages as a browser first sees them")
    p.add_argument("--metrics-first", nargs="+", metavar="KEY", default=[],
                   help="metrics every run lists first, in this order (system metrics last)")
    args = p.parse_args(argv)
    extra = {}
    if args.runs_view:
        experiment_id, share_key, view = args.runs_view
        extra[runs_page_key(experiment_id)] = (json.loads(view),
                                               f"viewStateShareKey={share_key}")
    if args.run_charts:
        charts = json.loads(args.run_charts)
        extra.update({run_charts_key(run): (charts["charts"], None) for run in charts["runs"]})

    os.environ.update(server_environment(args.backend_store_uri, args.default_artifact_root))
    # MLflow's app imports Starlette's deprecated WSGI middleware: not the user's concern.
    warnings.filterwarnings("ignore", message=".*starlette.middleware.wsgi")
    import uvicorn
    from mlflow.server import app as flask_app
    from mlflow.server.handlers import initialize_backend_stores

    # As `mlflow server` does before it starts its workers: opens (and migrates) the stores.
    initialize_backend_stores(args.backend_store_uri, args.backend_store_uri,
                              args.default_artifact_root)
    serve_index_with_defaults(flask_app, defaults_script(extra))
    order_run_metrics(flask_app, args.metrics_first)
    from mlflow.server.fastapi_app import app

    uvicorn.run(app, host=args.host, port=args.port, access_log=args.request_log,
                log_level="info" if args.request_log else "warning",
                # Ctrl-C and SIGTERM reach `study ui`, which ends this process through the
                # guard; uvicorn's own graceful wait would only delay the port's release.
                timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
