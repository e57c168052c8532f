"""The report stage: a small recorded study in, report.md + figures + plots/history.csv out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.errors import StudyError
from study.report import FIGURES, build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

def _model(name: str, dev: tuple, tune: tuple, parameters: int, run: str, cost: tuple) -> dict:
    """One model's entry in metrics.json: (EM, F1) pairs and its inference cost: (batch-1
    median and 95th percentile in ms, batch-32 questions per second, batch-32 padding)."""
    return {"model": name, "dev": {"exact_match": dev[0], "f1": dev[1]},
            "tune": {"exact_match": tune[0], "f1": tune[1]}, "parameters": parameters,
            "mlflow_run_id": run, "latency": {
                "questions": 64, "batch1_median_ms": cost[0], "batch1_p95_ms": cost[1],
                "batch32_questions_per_s": cost[2], "batch32_padding": cost[3]}}


STUDENT = "DistilBERT-style student (3 of the teacher's layers)"
METRICS = {
    "profile": "default",
    "data": "embedded XQuAD-en (1,190 SQuAD v1.1 dev questions), split by article: "
    "train 713 / tune 180 / dev 297 questions",
    "teacher": _model("MiniLM-L6-H384 (6 layers)", (40.1, 52.3), (38.0, 50.2), 22_700_000,
                      "run-teacher-0001", (12.3, 15.9, 61.0, 0.31)),
    "baseline": _model(STUDENT, (28.4, 39.0), (27.2, 37.5), 17_400_000, "run-baseline-0002",
                       (6.8, 8.4, 120.5, 0.31)),
    "distilled": {**_model(STUDENT, (31.0, 43.1), (29.9, 41.3), 17_400_000, "run-distilled-0003",
                           (6.9, 8.8, 118.2, 0.31)),
                  "trial": 3, "params": {"temperature": 3.1, "alpha_ce": 0.6, "alpha_squad": 0.4}},
    "search": {
        "study_name": "kd-search",
        "n_trials": 6,
        "n_complete": 4,
        "n_pruned": 1,
        "n_failed": 1,
        "best_trial": 3,
        "best_tune_f1": 41.3,
        "best_params": {"temperature": 3.1, "alpha_ce": 0.6, "alpha_squad": 0.4},
        "parent_run_id": "run-parent-0004",
    },
    "environment": {
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "git_dirty": "false",
        "versions": {"torch": "2.13.0", "transformers": "4.57.0", "optuna": "4.5.0"},
        "device": "cpu (x86_64, 2 threads)",
    },
}

TRIALS = """number,state,temperature,alpha_ce,alpha_squad,learning_rate,tune_f1,tune_exact_match,dev_f1,dev_exact_match,duration_s,mlflow_run_id
0,COMPLETE,1.5,0.2,0.9,,38.1,27.5,39.5,28.8,61.2,run-trial-0
1,COMPLETE,12.0,0.9,0.1,,36.4,26.0,38.0,27.1,60.4,run-trial-1
2,PRUNED,18.5,0.4,0.3,,33.0,22.9,,,20.3,run-trial-2
3,COMPLETE,3.1,0.6,0.4,,41.3,29.9,43.1,31.0,62.0,run-trial-3
4,FAIL,6.2,0.1,0.7,,,,,,3.1,run-trial-4
5,COMPLETE,2.2,0.8,0.5,,40.0,29.0,41.7,30.2,61.8,run-trial-5
"""

CURVES = "role,step,tune_exact_match,tune_f1\n" + "".join(
    f"{role},{step},{em},{f1}\n"
    for role, rows in (
        ("baseline", ((50, 12.0, 20.1), (100, 22.0, 31.7), (150, 27.2, 37.5))),
        ("distilled", ((50, 14.1, 22.8), (100, 25.0, 35.2), (150, 29.9, 41.3))),
    )
    for step, em, f1 in rows
)

SEEDS = {
    "seeds": [1, 2, 3],
    "baseline": {
        "exact_match": [28.4, 27.0, 29.1],
        "f1": [39.0, 37.9, 40.1],
        "mean": {"exact_match": 28.17, "f1": 39.0},
        "ci95": {"exact_match": [25.55, 30.79], "f1": [36.27, 41.73]},
    },
    "distilled": {
        "exact_match": [31.0, 30.2, 32.4],
        "f1": [43.1, 42.0, 44.5],
        "mean": {"exact_match": 31.2, "f1": 43.2},
        "ci95": {"exact_match": [28.48, 33.92], "f1": [40.4, 46.3]},
    },
    "paired_bootstrap": {"f1_diff": 4.2, "ci95": [1.9, 6.4], "samples": 2000, "questions": 297},
}
IMPORTANCES = {"temperature": 0.62, "alpha_ce": 0.27, "alpha_squad": 0.11}


def record_study(folder: Path, seeds: bool = False, importances: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(METRICS, indent=2))
    (folder / "trials.csv").write_text(TRIALS)
    (folder / "curves.csv").write_text(CURVES)
    if seeds:
        (folder / "seeds.json").write_text(json.dumps(SEEDS, indent=2))
    if importances:
        (folder / "importances.json").write_text(json.dumps(IMPORTANCES))
    return folder


def snapshot(paths: list[Path]) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in paths}


def test_report_without_seeds(tmp_path):
    folder = record_study(tmp_path / "reports")
    written = build_report(folder)
    names = {p.relative_to(folder).as_posix() for p in written}
    assert names == {f"figures/{n}.png" for n in FIGURES} | {"report.md", "plots/history.csv"}
    for name in FIGURES:
        png = (folder / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000, name

    md = (folder / "report.md").read_text()
    for row in (
        "| **Teacher** |",
        "| **Baseline (task-agnostic, no teacher)** |",
        "| **Distilled (best trial, #3)** |",
    ):
        assert row in md
    for paper in ("81.2 / 88.5", "77.7 / 85.8", "79.1 / 86.9", "70.4 EM / 79.8 F1"):
        assert paper in md
    # (43.1 - 39.0) / (52.3 - 39.0) = 30.8%
    assert (
        "distillation recovers 31% of the teacher–baseline dev F1 gap: "
        "(43.1 − 39.0) / (52.3 − 39.0); the paper: (86.9 − 85.8) / (88.5 − 85.8) = 41%"
    ) in md
    for run_id in (
        "run-teacher-0001",
        "run-baseline-0002",
        "run-distilled-0003",
        "run-parent-0004",
        "run-trial-4",
    ):
        assert run_id in md
    assert "**6 trials: 4 complete, 1 pruned, 1 failed**" in md
    assert "trials.csv lists" not in md  # the counts agree
    assert "Not run: seeds.json is absent" in md
    assert "small-scale reproduction" in md
    assert "0123456789abcdef0123456789abcdef01234567" in md and "| torch version | 2.13.0 |" in md
    for fig in FIGURES:
        assert f"](figures/{fig}.png)" in md

    history = (folder / "plots" / "history.csv").read_text().splitlines()
    assert history[0] == "trial,tune_f1,best_so_far,state"
    assert history[3] == "2,33.0,38.1,PRUNED"  # a pruned trial never becomes the best
    assert history[5] == "4,,41.3,FAIL"
    assert not (folder / "plots" / "curves.csv").exists()  # dvc reads reports/curves.csv itself

    first = snapshot(written)
    assert snapshot(build_report(folder)) == first  # byte-identical on regeneration


def test_report_with_seeds_and_no_importances(tmp_path):
    folder = record_study(tmp_path / "reports", seeds=True, importances=False)
    written = build_report(folder)
    md = (folder / "report.md").read_text()
    assert "dev F1 (± 95% CI)" in md
    assert "| 28.2 ± 2.6 | 39.0 ± 2.7 |" in md  # baseline: mean ± half-width
    assert "| 31.2 ± 2.7 | 43.2 [40.4, 46.3] |" in md  # asymmetric CI shown as bounds
    # A file written before seeds were resampled: its interval says it covers questions only.
    assert "| Searched best − baseline | +4.2 | [+1.9, +6.4] | ±2.2 | – | – | yes (positive) |" in md
    assert "95% CI (questions only)" in md and "seed variance is not in them" in md
    assert "seed variance is NOT in this interval, so it is too narrow" in md
    # The table now holds seed means: (43.2 - 39.0) / (52.3 - 39.0) = 31.6%
    assert "recovers 32% of the teacher–baseline dev F1 gap" in md
    assert "Parameter importances: not run" in md
    assert snapshot(build_report(folder)) == snapshot(written)


def test_ci_including_zero_is_reported_as_such(tmp_path):
    folder = record_study(tmp_path / "reports", importances=False)
    seeds = json.loads(json.dumps(SEEDS))
    seeds["paired_bootstrap"].update(f1_diff=0.6, ci95=[-0.8, 2.0])
    (folder / "seeds.json").write_text(json.dumps(seeds))
    from study.report import load_inputs, render_markdown

    md = render_markdown(load_inputs(folder))  # text only: no figures needed
    assert "| +0.6 | [-0.8, +2.0] | ±1.4 | – | – | no detectable difference |" in md
    assert ("no detectable difference. This study could not have detected a difference smaller "
            "than about ±1.4 F1 points (the interval's half-width)") in md


@pytest.mark.parametrize("name", ["metrics.json", "trials.csv", "curves.csv"])
def test_missing_input_names_the_file(tmp_path, name):
    folder = record_study(tmp_path / "reports")
    (folder / name).unlink()
    with pytest.raises(StudyError, match=rf"{name} not found at .*{name}: run `study best` first"):
        build_report(folder)
    assert not (folder / "report.md").exists()


def test_metrics_missing_a_key_names_it(tmp_path):
    folder = record_study(tmp_path / "reports")
    metrics = json.loads(json.dumps(METRICS))
    del metrics["baseline"]["dev"]["f1"]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(StudyError, match=r"has no `baseline\.dev\.f1`"):
        build_report(folder)


def test_cli_report_stage(tmp_path, capsys):
    from study.cli import main

    folder = record_study(tmp_path / "reports")
    assert main(["report", "--set", f"runtime.reports={folder}"]) == 0
    out = capsys.readouterr().out
    assert (
        f"wrote {folder / 'report.md'}" in out
        and f"wrote {folder / 'figures' / 'tradeoff.png'}" in out
    )

    (folder / "metrics.json").unlink()
    assert main(["report", "--set", f"runtime.reports={folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"study report: error: metrics.json not found at {folder / 'metrics.json'}: "
        "run `study best` first"
    )


def test_report_bytes_are_the_same_in_a_fresh_interpreter(tmp_path):
    # Two processes, two folders, the same inputs: every written file is byte-identical
    # (no timestamps, no PNG "Software" stamp, no dict- or hash-order dependence).
    import os
    import subprocess
    import sys

    first = record_study(tmp_path / "a", seeds=True)
    second = record_study(tmp_path / "b", seeds=True)
    written = build_report(first)
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    code = "import sys; from study.report import build_report; build_report(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(second)], check=True, env=env, timeout=120)
    for path in written:
        rel = path.relative_to(first)
        assert (second / rel).read_bytes() == path.read_bytes(), rel


def test_cost_is_latency_at_batch_1_and_throughput_at_batch_32(tmp_path):
    folder = record_study(tmp_path / "reports")
    build_report(folder)
    text = (folder / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| Teacher |")
               and "ms" in line)
    assert "| 12.3 ms | 15.9 ms | 61.0 /s | 31% |" in row
    assert "the same 64 dev questions" in text and "median and 95th percentile" in text
    assert "padding" in text


def test_a_results_file_from_before_the_latency_split_reads_as_not_measured(tmp_path):
    """Its `latency_ms` put per-question times at batch 1 and 32 side by side."""
    folder = record_study(tmp_path / "reports")
    metrics = json.loads(json.dumps(METRICS))
    for role in ("teacher", "baseline", "distilled"):
        del metrics[role]["latency"]
        metrics[role]["latency_ms"] = {"batch1": 40.0, "batch32": 48.0}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    build_report(folder)
    row = next(line for line in (folder / "report.md").read_text().splitlines()
               if line.startswith("| Teacher |") and "not measured" in line)
    assert "48.0" not in row and "40.0" not in row


@pytest.mark.parametrize("complete, says", [
    (1, ("not estimated: Optuna's importances need at least two complete trials "
         "(this study has 1)")),
    (3, "not estimated: Optuna could not tell the parameters' effects apart"),
])
def test_importances_not_estimated_say_why(tmp_path, complete, says):
    folder = record_study(tmp_path / "reports", importances=False)
    (folder / "importances.json").write_text("{}")  # what `study best` writes then
    metrics = json.loads(json.dumps(METRICS))
    metrics["search"]["n_complete"] = complete
    (folder / "metrics.json").write_text(json.dumps(metrics))
    build_report(folder)
    text = (folder / "report.md").read_text()
    assert f"Parameter importances: {says}" in text
    assert "| Parameter | Importance |" not in text


@pytest.mark.parametrize("change, message", [
    ({"ci95": {"exact_match": [25.55, 30.79], "f1": [36.27]}},
     r"seeds\.json at .*: `baseline\.ci95\.f1` must be \[low, high\]"),
    ({"mean": {"exact_match": 28.17}}, r"has no `baseline\.mean\.f1`: re-run `study seeds`"),
    ({"mean": {"exact_match": 28.17, "f1": "high"}},
     r"`baseline\.mean\.f1` must be a number \(got 'high'\)"),
])
def test_malformed_seeds_file_names_the_key(tmp_path, change, message):
    from study.report import load_inputs

    folder = record_study(tmp_path / "reports")
    seeds = json.loads(json.dumps(SEEDS))
    seeds["baseline"].update(change)
    (folder / "seeds.json").write_text(json.dumps(seeds))
    with pytest.raises(StudyError, match=message):
        load_inputs(folder)


def three_arm_seeds(authors_minus_baseline: list[float], distilled_minus_authors: list[float]):
    """seeds.json as `study seeds` writes it, with the two CIs given."""
    seeds = json.loads(json.dumps(SEEDS))
    del seeds["paired_bootstrap"]
    seeds["authors"] = json.loads(json.dumps(SEEDS["distilled"]))
    seeds["authors_params"] = {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5}
    seeds["params"] = {"temperature": 3.1, "alpha_ce": 0.6, "alpha_squad": 0.4}
    seeds["trial"] = 3

    def diff(ci):
        return {"f1_diff": sum(ci) / 2, "ci95": ci, "half_width": (ci[1] - ci[0]) / 2,
                "questions": 297, "seeds": [1, 2, 3], "resampled": ["seeds", "questions"],
                "per_seed": [ci[0], sum(ci) / 2, ci[1]], "seed_t_ci95": [ci[0] - 1, ci[1] + 1]}

    seeds["paired"] = {"authors_minus_baseline": diff(authors_minus_baseline),
                       "distilled_minus_authors": diff(distilled_minus_authors),
                       "distilled_minus_baseline": diff([1.9, 6.4])}
    return seeds


def findings_of(folder: Path, seeds: dict) -> str:
    from study.report import load_inputs, render_markdown

    (folder / "seeds.json").write_text(json.dumps(seeds))
    md = render_markdown(load_inputs(folder))
    section = md.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert md.index("## Findings") < md.index("## What these numbers come from")  # first
    return section


def test_findings_say_what_each_question_found(tmp_path):
    folder = record_study(tmp_path / "reports", importances=False)
    text = findings_of(folder, three_arm_seeds([1.2, 5.0], [-0.9, 1.5]))
    first, second = [p for p in text.strip().split("\n\n") if p]
    assert first.startswith("**Does distillation beat no teacher?**")
    assert ("+3.1 dev F1 points (95% CI [+1.2, +5.0], paired; seeds (1, 2, 3) and the same "
            "297 dev questions both resampled)") in first
    assert first.endswith(": distillation helps.")
    assert second.startswith("**Does the searched setting beat the authors'?**")
    assert "T = 3.1" in second and "[-0.9, +1.5]" in second
    # The words follow the interval, and say how small a difference could have been seen.
    assert second.endswith(": no detectable difference. This study could not have detected a "
                           "difference smaller than about ±1.2 F1 points (the interval's "
                           "half-width); more seeds (`study seeds --add N`) would narrow it.")


def test_findings_for_a_ci_below_zero_and_for_the_authors_as_winner(tmp_path):
    folder = record_study(tmp_path / "reports", importances=False)
    text = findings_of(folder, three_arm_seeds([-4.0, -0.5], [0.4, 2.0]))
    assert "distillation hurts." in text and "the search found a better setting." in text
    seeds = three_arm_seeds([-1.0, 2.0], [0.0, 0.0])
    seeds["params"] = dict(seeds["authors_params"])
    text = findings_of(folder, seeds)
    assert "distillation beat no teacher?** With the authors' setting" in text
    assert "no detectable difference." in text
    assert "best trial is the authors' setting itself" in text


def test_findings_from_a_two_arm_file_and_without_seeds(tmp_path):
    folder = record_study(tmp_path / "reports", importances=False)
    text = findings_of(folder, SEEDS)  # written before the authors' arm existed
    assert "With the searched setting" in text and "distillation helps." in text
    assert "Not answered: this seeds.json has no authors' arm" in text
    from study.report import load_inputs, render_markdown

    (folder / "seeds.json").unlink()
    md = render_markdown(load_inputs(folder))
    assert "Not answered yet: `study seeds` has not run" in md


def test_report_says_where_each_curve_ends(tmp_path):
    folder = record_study(tmp_path / "reports")
    build_report(folder)
    md = (folder / "report.md").read_text()
    # Half-way through 150 steps is the evaluation nearest step 75: step 50 or 100 (tie -> first).
    assert "- baseline: 20.1 half-way (step 50), 37.5 at the end (step 150); highest 37.5 at step 150" in md
    assert "- distilled: 22.8 half-way (step 50), 41.3 at the end (step 150); highest 41.3 at step 150" in md


def test_the_interval_method_and_a_share_near_zero_read_as_sentences(tmp_path):
    from study.intervals import DESCRIPTION
    from study.report import load_inputs, render_markdown

    folder = record_study(tmp_path / "reports", importances=False)
    seeds = three_arm_seeds([1.2, 5.0], [-0.9, 1.5])
    seeds["method"] = DESCRIPTION  # as `study seeds` records it
    seeds["gap_recovered"] = {"distilled": {
        "estimate": -0.04, "ci95": [-0.03, 9.1], "half_width": 4.6, "seeds": [1, 2, 3],
        "questions": 297, "resampled": ["seeds", "questions"], "teacher_f1": 52.3}}
    (folder / "seeds.json").write_text(json.dumps(seeds))
    md = render_markdown(load_inputs(folder))
    assert "In every interval below and in the findings, seeds and questions are both " \
           "treated as random (two-way crossed" in md
    assert "treats seeds" not in md
    assert "0.0% [0.0%, 9.1%] of the gap to the teacher" in md and "-0.0%" not in md
    metrics = json.loads(json.dumps(METRICS))  # single runs: distilled 0.01 F1 below baseline
    metrics["distilled"]["dev"]["f1"] = 38.99
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "seeds.json").unlink()
    md = render_markdown(load_inputs(folder))
    assert "distillation recovers 0% of the teacher–baseline dev F1 gap" in md
    assert "-0%" not in md


@pytest.mark.parametrize("session, says", [
    ({"configurations": 8, "target": 12, "stopped_by": "time bound",
      "stopped": "by the time bound after 8 of 12 configurations"},
     "**The search was stopped by the time bound after 8 of 12 configurations**: its best is "
     "the best of those 8, not of the 12 it was asked for."),
    ({"configurations": 12, "target": 12, "stopped_by": None, "stopped": None},
     "Configurations: 12 of 12 asked for (the search is bounded by count, never by time"),
])
def test_the_search_section_says_how_many_configurations_and_whether_it_was_cut(
        tmp_path, session, says):
    folder = record_study(tmp_path / "reports")
    metrics = json.loads(json.dumps(METRICS))
    metrics["search"].update(session)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    build_report(folder)
    text = (folder / "report.md").read_text()
    assert says in text
    assert ("was stopped" in text) == (session["stopped"] is not None)
