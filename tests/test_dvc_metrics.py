"""`dvc metrics show` reads numbers only, one short row per file, from the files dvc.yaml
declares as metrics; built here from the committed metrics.json and seeds.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from study import dvc_metrics

METRICS = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
SEEDS = json.loads((REPO_ROOT / "reports" / "seeds.json").read_text())


def test_rows_hold_numbers_only():
    rows = {**dvc_metrics.of_best(METRICS), **dvc_metrics.of_seeds(SEEDS)}
    assert set(rows) == {*dvc_metrics.BEST_FILES, *dvc_metrics.SEEDS_FILES}
    for name, row in rows.items():
        assert row and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in row.values()), (name, row)
    assert rows["distilled"]["f1"] == round(METRICS["distilled"]["dev"]["f1"], 2)
    assert rows["trials"]["n"] == METRICS["search"]["n_trials"]
    assert rows["seeds_diff"]["f1_lo"] <= rows["seeds_diff"]["f1"] <= rows["seeds_diff"]["f1_hi"]


@pytest.mark.parametrize(("t", "b", "d", "expected"), [(80, 60, 70, 50.0), (80, 60, 60, 0.0),
                                                       (80, 60, 85, 125.0), (70, 70, 75, None)])
def test_gap_recovered(t, b, d, expected):
    assert dvc_metrics.gap_recovered(t, b, d) == expected


def dvc(cwd, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_dvc_metrics_show_lists_the_declared_files_in_a_terminal_wide_table(tmp_path):
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    dvc(tmp_path, "init", "--no-scm", "-q")
    reports = tmp_path / "reports"
    dvc_metrics.write(reports, {**dvc_metrics.of_best(METRICS), **dvc_metrics.of_seeds(SEEDS)})
    for name in ("metrics.json", "seeds.json"):  # provenance: present, but not a metric
        shutil.copy(REPO_ROOT / "reports" / name, reports / name)
    shown = json.loads(dvc(tmp_path, "metrics", "show", "--json"))
    (revision,) = shown.values()  # the workspace ("" without git)
    files = revision["data"]
    names = (*dvc_metrics.BEST_FILES, *dvc_metrics.SEEDS_FILES)
    expected = {f"reports/metrics/{n}.json" for n in names}
    assert set(files) == expected
    table = dvc(tmp_path, "metrics", "show").splitlines()
    assert len(table) == 1 + len(expected)
    assert max(len(line) for line in table) <= 140, "\n".join(table)
