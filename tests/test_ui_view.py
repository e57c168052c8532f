"""What `study ui` sets for MLflow's UI, read back through MLflow's API and the page it serves:
the experiment's view tags, the study's shared view (filter, sort, columns, charts) and the
browser defaults in the UI's page. No server (tests/test_ui.py runs the real one)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO_ROOT

from study.config import load_config
from study.tracking import EXPERIMENT_TAGS, Tracker
from study.ui import (
    METRICS_FIRST,
    SHARED_VIEW_TAG,
    VIEW_KEY,
    share_study_view,
    study_filter,
    study_runs,
)
from study.ui_server import (
    WORKFLOW_KEY,
    defaults_script,
    metrics_first,
    run_charts_key,
    runs_page_key,
    with_defaults,
)


@pytest.fixture
def tracker(tmp_path):
    cfg = load_config(REPO_ROOT / "params.yaml", "smoke",
                      [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                       f"tracking.artifact_location={tmp_path / 'artifacts'}"])
    return cfg, Tracker(cfg)


def make_runs(tracker: Tracker) -> dict[str, str]:
    """A study as the search leaves it (parent, trials), `best` and a seed run beside it."""
    ids = {}
    for name, role, tags in [("study-s", "study", {"study_name": "s"}),
                             ("trial-0", "trial", {"study_name": "s"}),
                             ("trial-1", "trial", {"study_name": "s"}),
                             ("best-trial-1", "best", {"study_name": "s"}),
                             ("seed-1", "seeds", {})]:
        with tracker.run(name, role, tags=tags) as handle:
            ids[name] = handle.run_id
    return ids


def test_a_new_experiment_is_a_training_experiment(tracker):
    _, t = tracker
    assert t.client.get_experiment(t.experiment_id).tags["mlflow.experimentKind"] == \
        EXPERIMENT_TAGS["mlflow.experimentKind"] == "custom_model_development"


def test_the_shared_view_shows_the_study_best_first(tracker):
    cfg, t = tracker
    ids = make_runs(t)
    name, view = share_study_view(cfg, t)
    assert name == "s"
    stored = json.loads(t.client.get_experiment(t.experiment_id).tags[SHARED_VIEW_TAG + VIEW_KEY])
    assert stored == view
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`tune_f1`", False)
    # The filter MLflow runs: the study's parent and trials; not `best`, not the seed runs.
    shown = {r.info.run_name for r in t.client.search_runs([t.experiment_id], view["searchFilter"])}
    assert shown == {"study-s", "trial-0", "trial-1"}
    assert set(study_runs(t, name)) == {ids["study-s"], ids["trial-0"], ids["trial-1"]}
    # Scores, then the searched params (learning_rate only when searched), then the state.
    assert view["columnOrder"][:6] == view["selectedColumns"][:6] == [
        "metrics.`tune_f1`", "metrics.`dev_f1`", "params.`temperature`", "params.`alpha_ce`",
        "params.`alpha_squad`", "tags.`optuna_state`"]
    assert not any("learning_rate" in c or "Description" in c for c in view["selectedColumns"])
    # The chart view leads with the objective: parallel coordinates coloured by tune_f1.
    first = view["compareRunSections"][0]
    assert [c["metricSectionId"] for c in view["compareRunCharts"]] == [first["uuid"]] * 3
    parallel = view["compareRunCharts"][0]
    assert (parallel["type"], parallel["selectedMetrics"]) == ("PARALLEL", ["tune_f1"])
    assert [s["name"] for s in view["compareRunSections"][1:]] == ["Model metrics",
                                                                   "System metrics"]


def test_a_searched_learning_rate_is_a_column(tracker):
    cfg, t = tracker
    cfg = cfg.replace(search={"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}})
    _, view = share_study_view(cfg, t)
    assert "params.`learning_rate`" in view["selectedColumns"]


def test_a_study_name_is_quoted_in_the_filter():
    assert study_filter("it's") == "tags.study_name = 'it\\'s' AND tags.role != 'best'"
    assert study_filter(None) == ""


def script_of(page: str) -> str:
    return re.search(r"<script>(.*?)</script>", page, re.DOTALL)[1]


def test_the_ui_page_sets_the_training_view_before_the_app_runs():
    index = '<!doctype html><html><head><meta charset="utf-8"/><script defer src="main.js">' \
            '</script></head><body></body></html>'
    page = with_defaults(index, defaults_script())
    assert page.index(defaults_script()) < page.index("main.js")
    script = script_of(page)
    # Set where the browser has none, or where the address asks for the training view.
    assert f'if(g("{WORKFLOW_KEY}")===null||h.indexOf("workflowType=machine_learning")>=0)' \
        in script
    values = json.loads(re.search(r"var v=(\[.*?\]),h=", script)[1])
    assert json.loads(values[0]) == "machine_learning"  # stored as the UI's hook stores it


def test_the_runs_page_and_trial_charts_defaults_are_per_experiment_and_run():
    view = {"searchFilter": "tags.x = '</script>'", "selectedColumns": ["metrics.`tune_f1`"]}
    charts = {"compareRunCharts": []}
    script = defaults_script({runs_page_key("7"): (view, "viewStateShareKey=study"),
                              run_charts_key("r1"): (charts, None),
                              run_charts_key("r2"): (charts, None)})
    assert runs_page_key("7") == 'MLflowLocalStorage-1.1-ExperimentPage-["7"]-ReactComponentState'
    assert json.dumps(runs_page_key("7")) in script
    assert 'h.indexOf("viewStateShareKey=study")>=0' in script
    assert script.count("RunPage-") == 4  # two runs, each read and written
    values = json.loads(re.search(r"var v=(\[.*?\]),h=", script, re.DOTALL)[1])
    assert json.loads(values[-1]) == charts and json.loads(values[-2]) == view  # stored once
    assert script.count("</") == 1 and script.endswith("</script>")  # no value ends it early


def test_a_runs_metrics_lead_with_the_objective_and_end_with_system_metrics():
    stored = ["system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
              "loss", "grad_norm", "tune_exact_match", "tune_f1", "train_runtime",
              "dev_exact_match", "dev_f1"]
    listed = [m["key"] for m in metrics_first([{"key": k, "value": i} for i, k in
                                               enumerate(stored)], list(METRICS_FIRST))]
    assert listed == ["tune_f1", "dev_f1", "tune_exact_match", "dev_exact_match",
                      "loss", "grad_norm", "train_runtime",
                      "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"]
    # A run without the objective (a seed run): the first it has, system metrics still last.
    assert [m["key"] for m in metrics_first([{"key": "system/x"}, {"key": "loss"},
                                             {"key": "dev_f1"}], list(METRICS_FIRST))] \
        == ["dev_f1", "loss", "system/x"]
