"""dvc.yaml agrees with study.layout and the CLI: each stage's artifact and report outs and
deps are the paths the Layout says it writes and reads, and the stages come in the order
`study run` runs them, each after the stages whose outputs it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_dvc import STAGES, paths

from study.cli import RUN_CHAIN
from study.config import load_config
from study.layout import Layout

LAYOUT = Layout.of(load_config(REPO_ROOT / "params.yaml"))
IO = LAYOUT.dvc_stages()
# The standalone stage: its configuration is the search's first trial, so `study run` skips it.
STANDALONE = "distill"


def posix(items) -> set[str]:
    return {Path(p).as_posix() for p in items}


def located(entries) -> set[str]:
    """The entries that are pipeline artifacts or report files (not code, not packaged data)."""
    roots = (LAYOUT.artifacts.as_posix() + "/", LAYOUT.reports.root.as_posix() + "/")
    return {p for p in paths(entries) if p.startswith(roots)}


def test_the_layout_names_every_dvc_stage_in_order():
    assert list(IO) == list(STAGES)


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_outs_are_what_the_layout_says_it_writes(name):
    assert set(paths(STAGES[name].get("outs"))) == posix(IO[name].outputs)


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_are_what_the_layout_says_it_reads(name):
    assert located(STAGES[name].get("deps")) == posix(IO[name].inputs)


def test_stages_run_in_the_order_of_the_main_job():
    assert STANDALONE in STAGES and STANDALONE not in RUN_CHAIN
    assert [s for s in STAGES if s != STANDALONE] == list(RUN_CHAIN)


def test_every_stage_comes_after_the_stages_it_reads_from():
    order = list(STAGES)
    producer = {out: name for name in order for out in paths(STAGES[name].get("outs"))}
    for name in order:
        for dep in located(STAGES[name].get("deps")):
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
