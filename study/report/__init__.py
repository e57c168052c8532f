"""`study report`: reports/report.md, reports/figures/*.png and reports/plots/history.csv.

Reads only the files the other stages exported into the reports folder, never MLflow or
Optuna, so it runs in seconds and anyone with the folder can regenerate it:

    study report                    # default profile: reports/
    study report --profile smoke    # the folder named by runtime.reports for that profile

Inputs (in the reports folder; their schemas are in `inputs.py`):
    metrics.json      required, from `study best`: teacher, baseline, distilled, search, environment
    trials.csv        required, from `study best`: one row per Optuna trial
    curves.csv        required, from `study best`: tune-set scores during training
    seeds.json        optional, from `study seeds`: mean and 95% CI over seeds, paired bootstrap
    importances.json  optional, from `study best`: Optuna's parameter importances

`inputs` reads and validates them, `numbers` computes, `markdown` fills the Jinja2
template `templates/report.md.j2`, `figures` draws one figure per function. Everything
written is deterministic: the same inputs give byte-identical files.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from study.errors import StudyError
from study.files import ensure_writable, write_atomic
from study.layout import Layout, ReportFiles
from study.report.figures import FIGURES
from study.report.inputs import Inputs, load_inputs
from study.report.markdown import render_markdown
from study.report.numbers import best_so_far
from study.report.plotting import save_png

__all__ = ["FIGURES", "Inputs", "build_report", "load_inputs", "render_markdown", "run"]


def history_frame(trials: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"trial": trials["number"], "tune_f1": trials["tune_f1"],
                         "best_so_far": best_so_far(trials), "state": trials["state"]})


def _png(inp: Inputs, name: str) -> bytes:
    buffer = io.BytesIO()
    save_png(FIGURES[name](inp), buffer)
    return buffer.getvalue()


def build_report(reports_dir: Path) -> list[Path]:
    """Write report.md, figures/*.png and plots/history.csv into `reports_dir`."""
    files = ReportFiles(Path(reports_dir))
    # An unwritable folder is named as such, not as missing inputs (which it may also lack).
    ensure_writable(files.root)
    inp = load_inputs(files.root)
    try:
        files.figures.mkdir(parents=True, exist_ok=True)
        files.plots.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"cannot write to {reports_dir}: {exc.strerror}") from None
    written = []
    for name in sorted(FIGURES):
        path = files.figure(name)
        write_atomic(path, _png(inp, name))
        written.append(path)
    history = files.history
    write_atomic(history, history_frame(inp.trials).to_csv(index=False, lineterminator="\n").encode())
    written.append(history)
    report = files.report
    write_atomic(report, render_markdown(inp).encode("utf-8"))
    written.append(report)
    return written


def run(cfg) -> dict:
    paths = build_report(Layout.of(cfg).reports.root)
    for path in paths:
        print(f"wrote {path}")
    return {"written": [str(p) for p in paths]}
