"""The result documents (study.results): each writer refuses an incomplete or mistyped
document with one line naming the field, each document reads back as it was written, and
trials.csv built from Optuna's trials_dataframe is the text the hand-written loop gave."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import REPO_ROOT

from study import results
from study.errors import StudyError
from study.files import write_atomic, write_json
from study.search import RUN_ATTR, export_trials, trials_table
from study.seeds import summarise
from study.storage import known_experimental

REPORTS = REPO_ROOT / "reports"
RECORDED = Path(__file__).parent / "data"
# The default run's metrics.json, in today's schema: its `latency` not measured (the run
# predates the split into batch-1 latency and batch-32 throughput).
METRICS = json.loads((RECORDED / "metrics.json").read_text())

STAGE = {
    "role": "trial", "profile": "smoke", "seed": 1,
    "tune": {"exact_match": 20.297029702970296, "f1": 30.60447688292106},
    "dev": {"exact_match": 19.760479041916167, "f1": 28.920245436797853},
    "curve": [{"step": 23, "tune_exact_match": 2.9702970297029703, "tune_f1": 8.592159664202395},
              {"step": 46, "tune_exact_match": 6.435643564356436, "tune_f1": 13.52086165647149}],
    "train_loss": [{"step": 5, "loss": 5.8231}, {"step": 10, "loss": 4.95}],
    "train_windows": 731, "steps": 46, "parameters": 17241986, "train_seconds": 240.31,
    "teacher_cache_seconds": 0.0, "wall_seconds": 256.8,
    "distill": {"temperature": 1.19, "alpha_ce": 0.87, "alpha_squad": 0.6,
                "teacher_logits": "cache", "cache_dtype": "float16"},
    "mlflow_run_id": "68166d9cdb104802869a2343889adfa5", "resumed_from_step": 0,
}


def _runs(seed: int = 0, n_seeds: int = 3, questions: int = 40) -> dict:
    """Recorded seed trainings (arm -> seed -> per-question scores), as `study seeds` keeps."""
    rng = np.random.default_rng(seed)
    runs = {}
    for arm, p in (("baseline", 0.2), ("authors", 0.3), ("distilled", 0.35)):
        runs[arm] = {}
        for s in range(1, n_seeds + 1):
            f1 = (rng.random(questions) < p) * 100.0
            runs[arm][str(s)] = {"exact_match": f1.mean() * 0.8, "f1": f1.mean(),
                                 "mlflow_run_id": f"{arm}-{s}", "per_question_em": list(f1 * 0.8),
                                 "per_question_f1": list(f1)}
    return runs


AUTHORS = {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5}
SEEDS = summarise(_runs(), {"baseline": None, "authors": AUTHORS,
                            "distilled": {"temperature": 1.19, "alpha_ce": 0.87, "alpha_squad": 0.6}},
                  2, {"temperature": 1.19, "alpha_ce": 0.87, "alpha_squad": 0.6},
                  np.full(40, 60.0), 200, 0)

WRITERS = {  # document -> (writer, reader, a complete document as today's writers build it)
    "stage metrics.json": (results.write_stage_metrics,
                           lambda p: results.read_stage_metrics(p, "search"), STAGE),
    "reports/metrics.json": (results.write_metrics, results.read_metrics, METRICS),
    "seeds.json": (results.write_seeds, results.read_seeds, SEEDS),
}


def copy(doc: dict) -> dict:
    return json.loads(json.dumps(doc))


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", list(WRITERS))
def test_json_document_round_trip_and_bytes(tmp_path, name):
    write, read, doc = WRITERS[name]
    path = tmp_path / "doc.json"
    written = write(path, copy(doc))
    # The same bytes as the plain dict written before the schema existed.
    write_json(tmp_path / "plain.json", doc)
    assert path.read_bytes() == (tmp_path / "plain.json").read_bytes()
    back = read(path)
    assert back == written and back.model_dump() == written.model_dump()


def test_recorded_metrics_json_is_rewritten_byte_for_byte(tmp_path):
    path = tmp_path / "metrics.json"
    results.write_metrics(path, results.read_metrics(RECORDED / "metrics.json"))
    assert path.read_bytes() == (RECORDED / "metrics.json").read_bytes()


def test_committed_metrics_json_reads():
    """Whichever schema the committed report was written in (an older `latency_ms` reads as
    not measured), the report can be rebuilt from it."""
    metrics = results.read_metrics(REPORTS / "metrics.json")
    assert set(metrics.models) == set(results.ROLES)


def test_committed_curves_csv_round_trip(tmp_path):
    rows = list(csv.DictReader(io.StringIO((REPORTS / "curves.csv").read_text())))
    path = tmp_path / "curves.csv"
    results.write_curves(path, rows)
    assert path.read_bytes() == (REPORTS / "curves.csv").read_bytes()
    frame = results.read_curves(path)
    assert list(frame.columns) == list(results.CurveRow.model_fields)
    assert len(frame) == len(rows) and frame["tune_f1"].notna().all()


def test_old_seeds_file_reads_as_one_difference():
    # reports/seeds.json as a default run wrote it before `seeds` had the authors' arm.
    seeds = results.read_seeds(Path(__file__).parent / "data" / "seeds_two_arms.json")
    assert seeds.authors is None and list(seeds.paired) == ["distilled_minus_baseline"]


def test_committed_seeds_file_has_three_arms_and_three_differences():
    seeds = results.read_seeds(REPORTS / "seeds.json")
    assert seeds.authors is not None and sorted(seeds.paired) == [
        "authors_minus_baseline", "distilled_minus_authors", "distilled_minus_baseline"]
    for diff in seeds.paired.values():
        assert diff.ci95[0] <= diff.f1_diff <= diff.ci95[1]


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name, change, message", [
    ("reports/metrics.json", lambda d: d["baseline"]["dev"].pop("f1"),
     r"metrics\.json not written: it has no `baseline\.dev\.f1`$"),
    ("reports/metrics.json", lambda d: d["baseline"]["dev"].update(f1="high"),
     r"metrics\.json not written: `baseline\.dev\.f1` must be a number \(got 'high'\)$"),
    # A default only serves files written before the field existed: a writer must give it.
    ("reports/metrics.json", lambda d: d.pop("registered_model"),
     r"metrics\.json not written: it has no `registered_model`$"),
    ("reports/metrics.json", lambda d: d["distilled"].pop("trial"),
     r"it has no `distilled\.trial`$"),
    ("stage metrics.json", lambda d: d.pop("curve"), r"it has no `curve`$"),
    ("stage metrics.json", lambda d: d["curve"][1].update(step="late"),
     r"`curve\.step` must be a number \(got 'late'\)$"),
    ("seeds.json", lambda d: d["paired"]["distilled_minus_authors"].pop("half_width"),
     r"seeds\.json not written: it has no `paired\.distilled_minus_authors\.half_width`$"),
    ("seeds.json", lambda d: d["authors"]["ci95"].update(f1=[1.0]),
     r"`authors\.ci95\.f1` must be \[low, high\]$"),
    ("seeds.json", lambda d: d.update(seeds="1,2,3"), r"`seeds`: input should be a valid list"),
])
def test_writer_refuses_an_incomplete_or_mistyped_document(tmp_path, name, change, message):
    write, _, doc = WRITERS[name]
    doc = copy(doc)
    change(doc)
    path = tmp_path / "out" / name.split("/")[-1].split()[-1]
    with pytest.raises(StudyError, match=message) as info:
        write(path, doc)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not path.exists()


def test_row_writers_refuse_a_bad_row(tmp_path):
    rows = [{"role": "baseline", "step": 1, "tune_exact_match": 1.0, "tune_f1": 2.0},
            {"role": "distilled", "step": 1, "tune_exact_match": 1.0}]
    with pytest.raises(StudyError, match=r"curves\.csv \(row 2\) not written: it has no `tune_f1`"):
        results.write_curves(tmp_path / "curves.csv", rows)
    row = {f: "" for f in results.TrialRow.model_fields} | {"number": "x", "state": "COMPLETE"}
    with pytest.raises(StudyError, match=r"\(row 1\) not written: `number` must be a number"):
        results.write_trials(tmp_path / "trials.csv", [row])
    assert not (tmp_path / "curves.csv").exists() and not (tmp_path / "trials.csv").exists()


# --------------------------------------------------------------------------- trials.csv
def legacy_export_trials(study: optuna.Study, path: Path) -> None:
    """export_trials as it was before trials_dataframe: the reference for the same text."""
    cols = ["number", "state", "slot", "temperature", "alpha_ce", "alpha_squad", "learning_rate",
            "tune_f1", "tune_exact_match", "dev_f1", "dev_exact_match", "duration_s",
            "mlflow_run_id", "arm", "fail_reason"]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=cols)
    w.writeheader()
    for t in sorted(study.trials, key=lambda t: t.number):
        ua = t.user_attrs
        w.writerow({
            "number": t.number, "state": t.state.name, "slot": ua.get("slot", ""),
            **{k: t.params.get(k, "") for k in ("temperature", "alpha_ce", "alpha_squad",
                                                "learning_rate")},
            "tune_f1": t.value if t.value is not None else ua.get("tune_f1", ""),
            "tune_exact_match": ua.get("tune_exact_match", ""),
            "dev_f1": ua.get("dev_f1", ""), "dev_exact_match": ua.get("dev_exact_match", ""),
            "duration_s": round(t.duration.total_seconds(), 1) if t.duration else "",
            "mlflow_run_id": ua.get(RUN_ATTR, ""), "arm": ua.get("arm", "searched"),
            "fail_reason": ua.get("fail_reason", ""),
        })
    write_atomic(path, text.getvalue())


SPACE = {"temperature": optuna.distributions.FloatDistribution(1.0, 20.0, log=True),
         "alpha_ce": optuna.distributions.FloatDistribution(0.0, 1.0),
         "alpha_squad": optuna.distributions.FloatDistribution(0.0, 1.0),
         "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
START = datetime(2026, 11, 26, 9, 0, 0, 123456)


def frozen(number: int, state: str, params: dict, value: float | None, seconds: float | None,
           attrs: dict, intermediate: dict | None = None) -> optuna.trial.FrozenTrial:
    return optuna.trial.FrozenTrial(
        number=number, trial_id=number, state=optuna.trial.TrialState[state], value=value,
        datetime_start=START,
        datetime_complete=None if seconds is None else START + timedelta(seconds=seconds),
        params=params, distributions={k: SPACE[k] for k in params}, user_attrs=attrs,
        system_attrs={}, intermediate_values=intermediate or {})


def recorded_study(storage: str | None) -> optuna.Study:
    study = optuna.create_study(study_name="kd-search", storage=storage, direction="maximize")
    with known_experimental():  # as `study search` names its objective
        study.set_metric_names(["tune F1"])
    authors = {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5}
    found = {"temperature": 3.071057367777371, "alpha_ce": 0.9507143064099162,
             "alpha_squad": 0.7319939418114051}
    scores = {"tune_f1": 28.873602707745786, "tune_exact_match": 19.306930693069308,
              "dev_f1": 27.481531411410423, "dev_exact_match": 20.059880239520957}
    for trial in (
        frozen(0, "COMPLETE", authors, 30.60447688292106, 262.125, {
            **scores, RUN_ATTR: "68166d9cdb104802869a2343889adfa5", "arm": "authors"}),
        frozen(1, "COMPLETE", {**found, "learning_rate": 5.2e-05}, 28.873602707745786, 256.849999,
               {**scores, RUN_ATTR: "d37d73420e194cc6a124cc62982feffa"}),
        frozen(2, "PRUNED", found, 13.247543939233847, 64.25, {RUN_ATTR: "b06ccd"}, {1: 13.2475}),
        frozen(3, "PRUNED", found, None, 0.0, {"tune_f1": 11.5}),  # no value, zero duration
        frozen(4, "FAIL", {"temperature": 7.5}, None, 3.04,
               {RUN_ATTR: "e1", "fail_reason": 'FloatingPointError: loss, "nan"\nat step 3'}),
        frozen(5, "RUNNING", found, None, None, {RUN_ATTR: "r5", "worker": "host:1"}),
    ):
        study.add_trial(trial)
    return study


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_export_trials_gives_the_text_the_loop_gave(tmp_path, storage):
    url = f"sqlite:///{tmp_path / 'study.db'}" if storage == "sqlite" else None
    study = recorded_study(url)
    export_trials(study, tmp_path / "trials.csv")
    legacy_export_trials(study, tmp_path / "legacy.csv")
    text = (tmp_path / "trials.csv").read_bytes()
    assert text == (tmp_path / "legacy.csv").read_bytes()
    assert text.splitlines()[0].decode() == ",".join(results.TrialRow.model_fields)

    frame = results.read_trials(tmp_path / "trials.csv")
    assert frame["number"].tolist() == [0, 1, 2, 3, 4, 5]
    assert frame["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED", "FAIL",
                                       "RUNNING"]
    assert frame["tune_f1"].tolist()[:4] == [30.60447688292106, 28.873602707745786,
                                             13.247543939233847, 11.5]
    assert frame["duration_s"].tolist()[:3] == [262.1, 256.8, 64.2]
    assert frame["arm"].tolist()[:2] == ["authors", "searched"]
    assert frame["fail_reason"][4].startswith("FloatingPointError")


def test_export_of_a_study_without_trials_is_the_header(tmp_path):
    study = optuna.create_study()
    assert trials_table(study) == []
    export_trials(study, tmp_path / "trials.csv")
    legacy_export_trials(study, tmp_path / "legacy.csv")
    assert (tmp_path / "trials.csv").read_bytes() == (tmp_path / "legacy.csv").read_bytes()
