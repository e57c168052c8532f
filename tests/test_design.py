"""A study is one experiment: the authors' setting is its first trial, and its fixed
settings are recorded at creation and enforced on every later session (in-memory Optuna)."""

from __future__ import annotations

from pathlib import Path

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
    # How the study is run is not what a trial is; a trial's thread count is (its low bits).
    assert [k for k in keys if k.split(".")[0] in ("search", "seeds", "tracking", "runtime")] \
        == ["runtime.process_threads"]
    assert not {"distill.temperature", "distill.alpha_ce", "distill.alpha_squad"} & set(keys)


def test_a_trials_thread_count_is_a_fixed_setting(params_path, smoke):
    study = new_study()
    design.initialise(study, smoke)
    with pytest.raises(StudyError, match="runtime.process_threads: 1 in the study, 2 now"):
        design.check_fixed_settings(study, load_config(params_path, "smoke",
                                                       ["runtime.process_threads=2"]))


def test_a_study_made_by_other_code_is_refused(smoke, monkeypatch):
    study = new_study()
    design.initialise(study, smoke)
    assert study.user_attrs[design.CODE_ATTR] == design.code_fingerprint()
    design.check_fixed_settings(study, smoke)  # the same code: no error
    study.set_user_attr(design.CODE_ATTR, "0123456789abcdef")  # as if an older checkout made it
    with pytest.raises(StudyError, match="code: fingerprint 0123456789abcdef in the study"):
        design.check_fixed_settings(study, smoke)


def test_search_settings_are_recorded_and_compared(params_path, smoke):
    study = new_study()
    design.initialise(study, smoke)
    assert design.differences(study, smoke) == []
    other = load_config(params_path, "smoke", ["search.batch=3", "search.sampler_seed=7"])
    assert design.differences(study, other) == [
        "search.batch: 2 in the study, 3 now", "search.sampler_seed: 42 in the study, 7 now"]
    assert design.differences(study, other, search=False) == []


def test_the_fingerprint_covers_the_search_stages_code_deps(repo_root):
    import yaml

    deps = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["search"]["deps"]
    code = {d.removeprefix("study/") for d in deps
            if d.startswith("study/") and d.endswith(".py")}
    assert set(design.SEARCH_CODE) == code


def test_the_fingerprint_changes_with_any_of_its_modules(tmp_path, monkeypatch):
    import shutil

    import study

    copy = tmp_path / "study"
    shutil.copytree(Path(study.__file__).parent, copy)
    monkeypatch.setattr(design, "__file__", str(copy / "design.py"))
    before = design.code_fingerprint()
    assert before == design.code_fingerprint()
    (copy / "loss.py").write_text((copy / "loss.py").read_text() + "\n# a change\n")
    assert design.code_fingerprint() != before
