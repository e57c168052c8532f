"""Pruners by name, counting the trial's `tune` evaluation rounds as their resource."""

from __future__ import annotations

import optuna
import pytest

from study.bench.pruning import replay, same_configurations
from study.config import load_config
from study.errors import StudyError
from study.search import PRUNERS, evaluation_rounds, make_pruner


@pytest.mark.parametrize("name, cls", [
    ("none", optuna.pruners.NopPruner), ("median", optuna.pruners.MedianPruner),
    ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
    ("hyperband", optuna.pruners.HyperbandPruner)])
def test_each_pruner_name_builds_its_pruner(params_path, name, cls):
    # Hyperband reads its brackets from the storage: only with batches of one (config rule).
    batch = ["search.batch=1"] if name == "hyperband" else []
    cfg = load_config(params_path, "default", [f"search.pruner={name}", *batch])
    assert isinstance(make_pruner(cfg), cls)
    assert set(PRUNERS) == {"none", "median", "successive_halving", "hyperband"}


def test_the_resource_is_evaluation_rounds(params_path):
    recipe = ["student.train.epochs=4", "student.train.evals_per_epoch=2"]
    cfg = load_config(params_path, "default", recipe)
    spec = cfg.student.train
    assert evaluation_rounds(cfg) == spec.epochs * spec.evals_per_epoch == 8
    assert make_pruner(load_config(params_path, "default", [*recipe, "search.pruner=hyperband",
                                                            "search.batch=1"]))._max_resource == 8


def test_an_unknown_pruner_is_refused(params_path):
    with pytest.raises(StudyError, match="search.pruner"):
        load_config(params_path, "default", ["search.pruner=random"])


def _curve(number, rounds, steps=30):
    return {"number": number, "state": "COMPLETE", "rounds": rounds, "tune_f1": rounds[-1],
            "steps": steps}


# A late bloomer (trial 2: last at round 1, best at the end) behind two steady trials.
CURVES = [_curve(0, [10.0, 12.0, 14.0]), _curve(1, [9.0, 11.0, 13.0]), _curve(2, [5.0, 8.0, 30.0])]


def test_replay_without_a_pruner_trains_every_configuration_to_the_end():
    r = replay(CURVES, optuna.pruners.NopPruner(), "s", steps_per_round=10)
    assert r == {"training_steps": 90, "best_trial": 2, "best_tune_f1": 30.0, "stopped": []}


def test_replay_stops_what_the_pruner_stops_and_counts_the_steps_trained_until_then():
    # Successive halving, first rung at round 1, keeps a third: trial 1 (9 < 10) and the late
    # bloomer (5) stop after one round of 10 steps; the best left is trial 0.
    sh = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    r = replay(CURVES, sh, "s", steps_per_round=10)
    assert r["stopped"] == [{"number": 1, "round": 1}, {"number": 2, "round": 1}]
    assert r["training_steps"] == 30 + 10 + 10
    assert (r["best_trial"], r["best_tune_f1"]) == (0, 14.0)


def test_same_configurations_scores_every_pruner_and_first_rung_against_the_target(params_path):
    cfg = load_config(params_path, "default", [])  # 2 epochs, 3 rounds an epoch
    off = {"training_steps": 3 * 184, "best_tune_f1": 30.0,
           "trials": [_curve(t["number"], t["rounds"] * 2 + [t["tune_f1"]], steps=184)
                      for t in CURVES]}
    rows = same_configurations(cfg, off)
    assert [r["arm"] for r in rows] == [f"{p}@{w}" for p in PRUNERS if p != "none"
                                        for w in (1, 2, 3)]
    per_round = 184 // 2 // 3
    for r in rows:
        stopped = {s["number"]: s["round"] for s in r["stopped"]}
        assert r["training_steps"] == sum(per_round * stopped[n] if n in stopped else 184
                                          for n in (0, 1, 2))
        saved = 1 - r["training_steps"] / off["training_steps"]
        assert r["training_steps_saved"] == pytest.approx(saved, abs=1e-4)
        assert r["best_tune_f1_change"] == pytest.approx(r["best_tune_f1"] - 30.0)
        assert r["target_met"] == (saved >= 0.3 and r["best_tune_f1"] >= 29.0)
    # Stopping the late bloomer at round 1 loses the best configuration.
    assert not next(r for r in rows if r["arm"] == "successive_halving@1")["target_met"]
