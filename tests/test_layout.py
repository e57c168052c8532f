"""dvc.yaml, and every profile's pipeline instantiated from it, agree with study.layout and
the CLI: each stage's artifact and report outs and deps are the paths the profile's Layout
says it writes and reads, and the stages come in the order `study run` runs them, each after
the stages whose outputs it reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_dvc import PIPELINES, PROFILES, STAGES, paths

from study.cli import RUN_CHAIN
from study.config import load_config
from study.layout import Layout
from study.pipeline import moved

LAYOUTS = {p: Layout.of(load_config(REPO_ROOT / "params.yaml", p)) for p in PROFILES}
LAYOUT = LAYOUTS["default"]
IO = LAYOUT.dvc_stages()
# The standalone stage: its configuration is the search's first trial, so `study run` skips it.
STANDALONE = "distill"


def posix(items) -> set[str]:
    return {Path(p).as_posix() for p in items}


def located(entries, layout: Layout = LAYOUT) -> set[str]:
    """The entries that are pipeline artifacts or report files (not code, not packaged data)."""
    roots = (layout.artifacts.as_posix() + "/", layout.reports.root.as_posix() + "/")
    return {p for p in paths(entries) if p.startswith(roots)}


def test_the_layout_names_every_dvc_stage_in_order():
    assert list(IO) == list(STAGES)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", list(STAGES))
def test_stage_outs_are_what_the_layout_says_it_writes(name, profile):
    stage = PIPELINES[profile]["stages"][name]
    assert set(paths(stage.get("outs"))) == posix(LAYOUTS[profile].dvc_stages()[name].outputs)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_are_what_the_layout_says_it_reads(name, profile):
    layout = LAYOUTS[profile]
    stage = PIPELINES[profile]["stages"][name]
    assert located(stage.get("deps"), layout) == posix(layout.dvc_stages()[name].inputs)
    # Code and packaged data stay where they are, whatever the profile.
    unlocated = set(paths(stage.get("deps"))) - located(stage.get("deps"), layout)
    assert unlocated == set(paths(STAGES[name].get("deps"))) - located(STAGES[name].get("deps"))


@pytest.mark.parametrize("profile", PROFILES)
def test_a_profiles_metrics_and_plots_are_in_its_reports_folder(profile):
    reports = LAYOUTS[profile].reports
    metrics = {p for s in PIPELINES[profile]["stages"].values() for p in paths(s.get("metrics"))}
    assert metrics and all(Path(p).parent == reports.metrics_dir for p in metrics)
    here = Path("." if profile == "default" else f"pipelines/{profile}")
    plots = {Path(os.path.normpath(here / p)) for p in paths(PIPELINES[profile].get("plots"))}
    assert plots == {reports.history, reports.curves}


def test_a_path_moves_to_the_same_names_in_another_layout():
    smoke, paper = LAYOUTS["smoke"], LAYOUTS["paper"]
    assert moved(LAYOUT.teacher.model, LAYOUT, smoke) == smoke.teacher.model
    assert moved(LAYOUT.reports.metric("teacher"), LAYOUT, smoke) == smoke.reports.metric("teacher")
    assert moved(LAYOUT.reports.figures, LAYOUT, paper) == paper.reports.figures
    assert moved("study/data/xquad.en.json", LAYOUT, smoke) == Path("study/data/xquad.en.json")
    # Nested roots (the smoke profile's reports lie in its artifacts): the nearer one counts.
    assert moved(smoke.reports.trials, smoke, LAYOUT) == LAYOUT.reports.trials
    assert moved(smoke.search.root, smoke, LAYOUT) == LAYOUT.search.root


def test_stages_run_in_the_order_of_the_main_job():
    assert STANDALONE in STAGES and STANDALONE not in RUN_CHAIN
    assert [s for s in STAGES if s != STANDALONE] == list(RUN_CHAIN)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_stage_comes_after_the_stages_it_reads_from(profile):
    stages = PIPELINES[profile]["stages"]
    order = list(stages)
    producer = {out: name for name in order for out in paths(stages[name].get("outs"))}
    for name in order:
        for dep in located(stages[name].get("deps"), LAYOUTS[profile]):
            assert dep in producer, f"{name} reads {dep}, which no stage writes"
            assert order.index(producer[dep]) < order.index(name), \
                f"{name} reads {dep} but comes before {producer[dep]}, which writes it"
            assert producer[dep] != STANDALONE, f"{name} needs the standalone {STANDALONE} stage"


def test_the_on_disk_names_stay_the_same():
    art, rep = Path("artifacts/default"), Path("reports")
    assert LAYOUT.artifacts == art and LAYOUT.reports.root == rep
    assert LAYOUT.data.manifest == art / "data" / "split.json"
    assert LAYOUT.data.split("dev") == art / "data" / "dev.json"
    assert LAYOUT.teacher.model == art / "teacher" / "model"
    assert LAYOUT.baseline.metrics == art / "baseline" / "metrics.json"
    assert LAYOUT.best.predictions("dev") == art / "best" / "predictions_dev.json"
    assert LAYOUT.search.trial(3).model == art / "search" / "trials" / "3" / "model"
    assert LAYOUT.teacher_cache == art / "teacher_cache"
    assert LAYOUT.windows == art / "windows"
    r = LAYOUT.reports
    assert [r.metrics, r.trials, r.curves, r.importances, r.seeds, r.bench, r.report] == [
        rep / n for n in ("metrics.json", "trials.csv", "curves.csv", "importances.json",
                          "seeds.json", "bench.json", "report.md")]
    assert r.figure("tradeoff") == rep / "figures" / "tradeoff.png"
    assert r.history == rep / "plots" / "history.csv"
    assert r.metric("teacher") == rep / "metrics" / "teacher.json"


def test_a_profile_moves_the_whole_layout(params_path):
    smoke = Layout.of(load_config(params_path, "smoke"))
    assert smoke.artifacts == Path("artifacts/smoke")
    assert smoke.reports.root == Path(load_config(params_path, "smoke").reports)
    assert smoke.teacher.model == Path("artifacts/smoke/teacher/model")
