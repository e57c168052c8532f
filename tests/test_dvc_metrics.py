"""`dvc metrics show` reads numbers only, one short row per file, from the files dvc.yaml
declares as metrics (and a profile's pipeline, in its own reports folder); built here from
the committed metrics.json and seeds.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from study import dvc_metrics, pipeline
from study.config import load_config
from study.layout import Layout, ReportFiles
from study.metric import gap_recovered

COMMITTED = ReportFiles(REPO_ROOT / "reports")
METRICS = json.loads(COMMITTED.metrics.read_text())
SEEDS = json.loads(COMMITTED.seeds.read_text())




def three_arms(seeds: dict) -> dict:
    """seeds.json as `study seeds` writes it now; the committed one may predate the authors'
    arm (then its searched arm and its one difference stand in for the missing ones)."""
    if "authors" in seeds:
        return seeds
    pb = seeds["paired_bootstrap"]
    return {**seeds, "authors": seeds["distilled"],
            "paired": {name: pb for name in ("authors_minus_baseline", "distilled_minus_authors",
                                             "distilled_minus_baseline")}}


ROWS = {**dvc_metrics.of_best(METRICS), **dvc_metrics.of_seeds(three_arms(SEEDS))}


def test_rows_hold_numbers_only():
    rows = ROWS
    assert {"teacher", "baseline", "distilled", "trials", "seeds_baseline",
            "seeds_distilled"} <= set(rows)
    for name, row in rows.items():
        assert row and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in row.values()), (name, row)
    assert rows["distilled"]["f1"] == round(METRICS["distilled"]["dev"]["f1"], 2)
    assert rows["trials"]["n"] == METRICS["search"]["n_trials"]
    diffs = [row for name, row in rows.items() if "diff" in name or "_vs_" in name]
    assert diffs and all(row["f1_lo"] <= row["f1"] <= row["f1_hi"] for row in diffs)


def test_three_arm_seeds_give_one_row_per_arm_and_comparison():
    arm = {"mean": {"exact_match": 1.0, "f1": 2.0},
           "ci95": {"exact_match": [0.5, 1.5], "f1": [1.0, 3.0]}}
    pb = {"f1_diff": 1.0, "ci95": [0.25, 1.75]}
    rows = dvc_metrics.of_seeds({"seeds": [1, 2, 3], "baseline": arm, "authors": arm,
                                 "distilled": arm, "paired": {"authors_minus_baseline": pb,
                                                              "distilled_minus_authors": pb}})
    assert set(rows) == {"seeds_baseline", "seeds_authors", "seeds_distilled",
                         "authors_vs_baseline", "distilled_vs_authors"}
    assert rows["seeds_authors"] == {"em": 1.0, "em_lo": 0.5, "em_hi": 1.5, "f1": 2.0,
                                     "f1_lo": 1.0, "f1_hi": 3.0, "n": 3}
    assert rows["authors_vs_baseline"] == {"f1": 1.0, "f1_lo": 0.25, "f1_hi": 1.75}


@pytest.mark.parametrize(("t", "b", "d", "expected"), [(80, 60, 70, 50.0), (80, 60, 60, 0.0),
                                                       (80, 60, 85, 125.0), (70, 70, 75, None)])
def test_gap_recovered(t, b, d, expected):
    assert gap_recovered(t, b, d) == expected


def dvc(cwd, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_dvc_metrics_show_lists_the_declared_files_in_a_terminal_wide_table(tmp_path):
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    dvc(tmp_path, "init", "--no-scm", "-q")
    reports = ReportFiles(tmp_path / "reports")
    dvc_metrics.write(reports, ROWS)
    # provenance: present, but not a metric
    shutil.copy(COMMITTED.metrics, reports.metrics)
    shutil.copy(COMMITTED.seeds, reports.seeds)
    shown = json.loads(dvc(tmp_path, "metrics", "show", "--json"))
    (revision,) = shown.values()  # the workspace ("" without git)
    files = revision["data"]
    # dvc.yaml declares exactly the files the stages write, and nothing else is a metric.
    expected = {f"reports/metrics/{n}.json" for n in ROWS}
    assert set(files) == expected
    table = dvc(tmp_path, "metrics", "show").splitlines()
    assert len(table) == 1 + len(expected)
    assert max(len(line) for line in table) <= 150, "\n".join(table)


def test_a_profiles_pipeline_declares_the_files_written_in_its_reports_folder(tmp_path,
                                                                             monkeypatch):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    dvc(tmp_path, "init", "--no-scm", "-q")
    monkeypatch.chdir(tmp_path)
    pipeline.write("smoke")
    folder = Layout.of(load_config(tmp_path / "params.yaml", "smoke")).reports
    dvc_metrics.write(ReportFiles(tmp_path / folder.root), ROWS)
    shown = json.loads(dvc(tmp_path, "metrics", "show", "--json", folder.metrics_dir.as_posix()))
    (revision,) = shown.values()
    assert set(revision["data"]) == {folder.metric(n).as_posix() for n in ROWS}
