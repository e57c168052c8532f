"""`study bench --floor` (study/bench/floor.py): the main job's FLOPs counted on the smoke
profile's real windows, divided by the GEMM peaks bench.json holds; the search counted as its
study recorded it when the study is complete, else unpruned; refused without a GEMM peak."""

from __future__ import annotations

import json

import optuna
import pytest

from study import design, prepare
from study.bench import cpu, floor
from study.config import load_config
from study.errors import StudyError
from study.files import read_json
from study.fit import data_windows
from study.modeling import build_student
from study.search import STEPS_ATTR
from study.storage import sqlite_path

PEAKS = {"1": {"peak_gflops": 10.0}, "2": {"peak_gflops": 16.0}}


def test_window_flops_are_the_step_flops_of_each_window_and_a_third_to_answer():
    shape = {"non_embedding_parameters": 1000, "layers": 2, "hidden": 4}
    train, answer = floor.window_flops(shape, [5, 3])
    assert train == cpu.step_flops(shape, 1, 5) + cpu.step_flops(shape, 1, 3)
    assert answer == pytest.approx(train / 3)


@pytest.fixture
def smoke(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, "smoke", ["runtime.reports=reports", "runtime.processes=2"])
    prepare.run(cfg)
    (tmp_path / "reports").mkdir(exist_ok=True)
    bench = tmp_path / "reports" / "bench.json"
    bench.write_text(json.dumps({"cpu": {"gemm": PEAKS}, "other": {"kept": True}}))
    return cfg, bench


def test_an_unsearched_profile_counts_every_trial_unpruned_at_the_peaks(smoke):
    cfg, bench = smoke
    s = floor.run(cfg)
    doc = read_json(bench, "benchmark file", "")
    assert doc["other"] == {"kept": True} and doc["cpu"]["gemm"] == PEAKS
    assert doc["floor"]["minutes"] == s["minutes"]
    assert s["search_counted_from"].startswith("no search study")
    assert not (bench.parent.parent / "artifacts" / "smoke" / "search").exists()  # none made
    full = 18  # the smoke recipe: 2 epochs of 9 batches
    assert s["student_steps"] == {"search": 3 * full, "seeds": 3 * 3 * full,
                                  "baseline_and_distill": 2 * full, "total": 14 * full}
    # Side by side: two 1-thread processes at the 1-thread peak; alone: the 2-thread peak.
    assert s["gflops_used"] == {"teacher": 16.0, "baseline": 16.0, "distill": 16.0,
                                "search": 20.0, "seeds": 20.0}
    for stage, minutes in s["minutes"].items():
        if stage != "total":
            per_tflop = 1e3 / s["gflops_used"][stage] / 60  # minutes
            assert minutes == pytest.approx(s["tflop"][stage] * per_tflop, abs=0.006)
    # A cached teacher: the distilled trainings cost what the baseline does.
    assert s["tflop"]["distill"] == s["tflop"]["baseline"] > 0
    assert s["minutes"]["total"] == pytest.approx(
        sum(v for k, v in s["minutes"].items() if k != "total"), abs=0.1)
    assert s["minutes_at_bare_step_rate"] is None  # no `cpu.step` in bench.json


def test_at_a_bare_steps_share_of_the_peak_the_minutes_grow_by_its_inverse(smoke):
    cfg, bench = smoke
    at_peak = floor.run(cfg)["minutes"]["total"]
    step = {"threads": {t: {"bare_share_of_gemm_peak": 0.5} for t in ("1", "2")}}
    bench.write_text(json.dumps({"cpu": {"gemm": PEAKS, "step": step}}))
    assert floor.run(cfg)["minutes_at_bare_step_rate"] == pytest.approx(2 * at_peak, abs=0.15)


SEARCHED = {"temperature": 6.5, "alpha_ce": 0.8, "alpha_squad": 0.1}
SPACE = {k: optuna.distributions.FloatDistribution(0.0, 20.0) for k in SEARCHED}


def recorded_study(cfg, best_params: dict, stamped: bool = True) -> None:
    """The profile's study, made anew: one complete trial of 18 steps (the best, with
    `best_params`) and two pruned at 9, stamped with the recipe and code as `study search`
    does."""
    storage = cfg.storage_url
    sqlite_path(storage).parent.mkdir(parents=True, exist_ok=True)
    if cfg.search.study_name in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=cfg.search.study_name, storage=storage)
    study = optuna.create_study(study_name=cfg.search.study_name, storage=storage,
                                direction="maximize")
    for state, steps, evals, params in [("COMPLETE", 18, 2, best_params),
                                        ("PRUNED", 9, 1, SEARCHED), ("PRUNED", 9, 1, SEARCHED)]:
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState[state], value=1.0 if state == "COMPLETE" else None,
            intermediate_values={i: 1.0 for i in range(evals)}, user_attrs={STEPS_ATTR: steps},
            params=params, distributions=SPACE))
    if stamped:
        design.initialise(study, cfg)


def test_a_complete_search_study_is_counted_as_recorded(smoke):
    cfg, _ = smoke
    unpruned = floor.run(cfg)
    recorded_study(cfg, SEARCHED, stamped=False)
    assert floor.run(cfg)["search_counted_from"].startswith("the search study differs (not made")
    recorded_study(cfg, SEARCHED)
    s = floor.run(cfg)
    assert s["search_counted_from"] == "the search study's recorded trials"
    assert s["student_steps"]["search"] == 36
    assert s["tflop"]["search"] < unpruned["tflop"]["search"]
    # Its best is not the authors' setting: the seeds train three arms, as when unrecorded.
    assert s["seeds_arms"] == unpruned["seeds_arms"] == 3
    assert s["tflop"]["seeds"] == unpruned["tflop"]["seeds"]

    # The authors' setting as the best: the seeds stage trains two arms.
    recorded_study(cfg, design.authors_params(cfg))
    s = floor.run(cfg)
    assert s["seeds_arms"] == 2 and s["student_steps"]["seeds"] == 2 * 3 * 18
    assert s["tflop"]["seeds"] == pytest.approx(unpruned["tflop"]["seeds"] * 2 / 3, abs=0.002)


def test_a_full_training_answers_tune_at_each_evaluation_and_once_for_its_final_model(smoke):
    cfg, _ = smoke
    # Smoke: 9 steps an epoch, 1 evaluation an epoch, 2 epochs: evaluated at steps 9 and 18,
    # the last of which is the final model's. With 2 an epoch (every 4 steps): 4, 8, 12, 16, 18.
    one = floor.run(cfg)
    two = floor.run(load_config(None, "smoke", ["runtime.reports=reports", "runtime.processes=2",
                                                "student.train.evals_per_epoch=2"]))
    student, tokenizer = build_student(cfg.student, cfg.seed)
    _, answer_tune = floor.window_flops(
        cpu.model_shape(student),
        [len(ids) for ids in data_windows(cfg, tokenizer)[2].tune["input_ids"]])
    assert (two["tflop"]["baseline"] - one["tflop"]["baseline"]) * 1e12 == pytest.approx(
        3 * answer_tune, abs=0.0011e12)  # TFLOP kept to 0.001


def test_without_a_gemm_peak_it_is_refused_in_one_line(smoke):
    cfg, bench = smoke
    bench.write_text(json.dumps({"other": {"kept": True}}))
    with pytest.raises(StudyError, match=r"^reports/bench.json has no `cpu.gemm`: run `study "
                                         r"bench --cpu --parts gemm` first"):
        floor.run(cfg)
    assert json.loads(bench.read_text()) == {"other": {"kept": True}}


def test_a_search_study_of_another_recipe_is_not_counted(smoke):
    cfg, _ = smoke
    sqlite_path(cfg.storage_url).parent.mkdir(parents=True)
    study = optuna.create_study(study_name=cfg.search.study_name, storage=cfg.storage_url,
                                direction="maximize")
    design.initialise(study, cfg)
    longer = load_config(None, "smoke", ["runtime.reports=reports", "student.train.epochs=4"])
    s = floor.run(longer)
    assert s["search_counted_from"].startswith("the search study differs (student.train.epochs")
    assert s["student_steps"]["search"] == 3 * 36  # 4 epochs of 9 batches, unpruned
