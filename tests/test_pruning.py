"""Pruners by name, counting the trial's `tune` evaluation rounds as their resource."""

from __future__ import annotations

import optuna
import pytest

from study.config import load_config
from study.errors import StudyError
from study.search import PRUNERS, evaluation_rounds, make_pruner


@pytest.mark.parametrize("name, cls", [
    ("none", optuna.pruners.NopPruner), ("median", optuna.pruners.MedianPruner),
    ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
    ("hyperband", optuna.pruners.HyperbandPruner)])
def test_each_pruner_name_builds_its_pruner(params_path, name, cls):
    cfg = load_config(params_path, "default", [f"search.pruner={name}"])
    assert isinstance(make_pruner(cfg), cls)
    assert set(PRUNERS) == {"none", "median", "successive_halving", "hyperband"}


def test_the_resource_is_evaluation_rounds(params_path):
    recipe = ["student.train.epochs=4", "student.train.evals_per_epoch=2"]
    cfg = load_config(params_path, "default", recipe)
    spec = cfg.student.train
    assert evaluation_rounds(cfg) == spec.epochs * spec.evals_per_epoch == 8
    assert make_pruner(load_config(params_path, "default", [*recipe, "search.pruner=hyperband"])
                       )._max_resource == 8


def test_an_unknown_pruner_is_refused(params_path):
    with pytest.raises(StudyError, match="search.pruner"):
        load_config(params_path, "default", ["search.pruner=random"])
