"""A study is one experiment: the authors' setting is its first trial, and its fixed
settings are recorded at creation and enforced on every later session (in-memory Optuna)."""

from __future__ import annotations

import optuna
import pytest

from study import design
from study.config import load_config
from study.errors import StudyError


@pytest.fixture
def smoke(params_path):
    return load_config(params_path, "smoke")


def new_study() -> optuna.Study:
    return optuna.create_study(study_name="t", direction="maximize",
                               storage=optuna.storages.InMemoryStorage())


def test_a_new_study_starts_with_the_authors_setting(smoke):
    study = new_study()
    assert design.initialise(study, smoke)
    trial = study.ask()  # the first trial asked for is the enqueued one
    for name in ("temperature", "alpha_ce", "alpha_squad"):
        trial.suggest_float(name, 0.0, 20.0)
    assert trial.params == {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5}
    assert study.trials[0].user_attrs[design.ARM_ATTR] == "authors"
    # A second worker opening the same study adds nothing.
    assert not design.initialise(study, smoke)
    assert len(study.trials) == 1


def test_authors_trial_includes_the_learning_rate_when_it_is_searched(params_path):
    cfg = load_config(params_path, "smoke", ["search.learning_rate={low: 1.0e-5, high: 1.0e-3}"])
    assert design.authors_params(cfg)["learning_rate"] == cfg.student.train.learning_rate
    assert "student.train.learning_rate" not in design.fixed_settings(cfg)


def test_a_changed_fixed_setting_is_refused_naming_the_key(params_path, smoke):
    study = new_study()
    design.initialise(study, smoke)
    before = (len(study.trials), dict(study.user_attrs))
    changed = load_config(params_path, "smoke", ["student.layers=[0, 1]",
                                                 "student.train.epochs=1"])
    with pytest.raises(StudyError) as err:
        design.check_fixed_settings(study, changed)
    message = str(err.value)
    assert "student.layers" in message and "student.train.epochs" in message
    assert "--study-name" in message and "\n" not in message
    assert (len(study.trials), dict(study.user_attrs)) == before


def test_what_the_search_varies_or_how_it_runs_is_not_fixed(params_path, smoke):
    study = new_study()
    design.initialise(study, smoke)
    other = load_config(params_path, "smoke", ["distill.temperature=7", "search.n_trials=50",
                                               "search.pruner=none", "runtime.threads=1"])
    design.check_fixed_settings(study, other)  # no error
    keys = design.fixed_settings(smoke)
    assert {"seed", "data.max_length", "student.layers", "student.train.epochs",
            "teacher.init", "eval.n_best"} <= set(keys)
    assert not [k for k in keys if k.split(".")[0] in ("search", "seeds", "tracking", "runtime")]
    assert not {"distill.temperature", "distill.alpha_ce", "distill.alpha_squad"} & set(keys)
