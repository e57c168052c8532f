"""params.yaml -> validated, frozen Config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from study.config import (
    Config,
    DataConfig,
    DistillConfig,
    StudentConfig,
    TrainSpec,
    error_line,
    load_config,
    validate_distill_weights,
)
from study.errors import StudyError


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_repo_profiles_load(params_path, profile):
    cfg = load_config(params_path, profile)
    assert isinstance(cfg, Config)
    assert cfg.profile == profile
    assert str(cfg.artifacts) == f"artifacts/{profile}"
    assert cfg.experiment_name == f"kd-qa-{profile}"


def test_profiles_overlay_the_default(params_path):
    default = load_config(params_path, "default")
    smoke = load_config(params_path, "smoke")
    paper = load_config(params_path, "paper")
    # Values from params.yaml, typed.
    assert default.distill == DistillConfig(temperature=2.0, alpha_ce=0.5, alpha_squad=0.5,
                                            teacher_logits="cache", cache_dtype="float16")
    assert default.student.layers == (0, 1, 2)
    assert default.teacher.train.learning_rate == pytest.approx(1.5e-4)
    # smoke changes only what it names; the rest stays the default's.
    assert smoke.data.max_questions == 40 and smoke.data.max_length == 128
    assert smoke.student.layers == (0,)
    assert smoke.student.train.evals_per_epoch == 1
    assert smoke.student.train.weight_decay == default.student.train.weight_decay
    assert smoke.distill == default.distill
    assert smoke.data.split_seed == default.data.split_seed
    assert paper.data.source == "hub" and paper.teacher.init == "bert-base-uncased"
    assert paper.student.layers is None
    assert default.hash() != smoke.hash()


def test_default_when_no_profile(params_path):
    assert load_config(params_path).profile == "default"


def test_overrides_apply_and_are_typed(params_path):
    cfg = load_config(params_path, "smoke", ["distill.temperature=4", "student.layers=[1, 0]",
                                             "data.max_questions=null"])
    assert cfg.distill.temperature == 4.0 and isinstance(cfg.distill.temperature, float)
    assert cfg.student.layers == (1, 0)
    assert cfg.data.max_questions is None


def test_unknown_profile(params_path):
    with pytest.raises(StudyError, match="unknown profile 'nope'"):
        load_config(params_path, "nope")


@pytest.mark.parametrize("override, key", [
    ("data.foo=1", "data.foo"),
    ("student.train.foo=1", "student.train.foo"),
    ("bogus=3", "bogus"),
])
def test_unknown_key_named(params_path, override, key):
    with pytest.raises(StudyError, match="unknown params key") as info:
        load_config(params_path, "smoke", [override])
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("overrides, needle", [
    (["distill.temperature=-1"], "distill.temperature"),
    (["distill.temperature=0"], "distill.temperature"),
    (["distill.alpha_ce=1.5"], "distill.alpha_ce"),
    (["distill.alpha_squad=-0.1"], "distill.alpha_squad"),
    (["distill.alpha_ce=0", "distill.alpha_squad=0"], "cannot both be 0"),
    (["distill.teacher_logits=sometimes"], "distill.teacher_logits"),
    (["data.doc_stride=500"], "data.doc_stride"),
    (["student.train.batch_size=two"], "student.train.batch_size"),
    (["student.layers=[0, 0]"], "student.layers"),
    (["seeds.values=[1, 2]"], "seeds.values"),
])
def test_invalid_values_refused(params_path, overrides, needle):
    with pytest.raises(StudyError, match="invalid params") as info:
        load_config(params_path, "smoke", overrides)
    assert needle in str(info.value)


def test_malformed_override_refused(params_path):
    with pytest.raises(StudyError, match="KEY=VALUE"):
        load_config(params_path, "smoke", ["distill.temperature"])


def test_missing_params_file(tmp_path):
    with pytest.raises(StudyError, match="cannot read params file"):
        load_config(tmp_path / "absent.yaml")


def test_config_is_frozen(params_path):
    cfg = load_config(params_path, "smoke")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.seed = 1
    with pytest.raises(ValidationError, match="frozen"):
        cfg.distill.temperature = 9.0
    with pytest.raises(ValidationError, match="frozen"):
        cfg.student.train.learning_rate = 1.0
    assert isinstance(cfg.student.layers, tuple)  # no mutable list inside either


def test_replace_validates_and_leaves_original(params_path):
    cfg = load_config(params_path, "smoke")
    new = cfg.replace(distill=cfg.distill.replace(temperature=7.0))
    assert new.distill.temperature == 7.0 and cfg.distill.temperature == 2.0
    # model_copy(update=...) skips validation: replace() still refuses what it built.
    with pytest.raises(StudyError, match="distill.temperature"):
        cfg.replace(distill=cfg.distill.model_copy(update={"temperature": -1.0}))
    bad_train = cfg.teacher.train.model_copy(update={"epochs": 0})
    with pytest.raises(StudyError, match="teacher.train.epochs"):
        cfg.replace(teacher=cfg.teacher.model_copy(update={"train": bad_train}))
    with pytest.raises(StudyError, match="invalid params: epochs must be greater than 0"):
        cfg.teacher.train.replace(epochs=0)
    # A dict changes only the fields it names, and errors carry the whole dotted key.
    nested = cfg.replace(student={"train": {"learning_rate": 5e-4}})
    assert nested.student.train.learning_rate == 5e-4
    assert nested.student.train.epochs == cfg.student.train.epochs
    assert nested.student.layers == cfg.student.layers
    with pytest.raises(StudyError, match=r"student\.train\.learning_rate must be greater than 0"):
        cfg.replace(student={"train": {"learning_rate": -1.0}})


def test_yaml_no_is_the_literal_no(params_path):
    # YAML 1.1 reads an unquoted `no` as false; `mixed_precision: no` must still mean "no".
    cfg = load_config(params_path, "smoke", ["runtime.mixed_precision=no"])
    assert cfg.runtime.mixed_precision == "no"
    with pytest.raises(StudyError, match="runtime.mixed_precision"):
        load_config(params_path, "smoke", ["runtime.mixed_precision=yes"])


def test_objects_built_in_code_are_validated():
    # Field constraints and cross-field rules run on direct construction too.
    with pytest.raises(ValidationError, match="doc_stride"):
        DataConfig(max_length=64)  # the default stride 128 no longer fits
    with pytest.raises(ValidationError, match="path"):
        DataConfig(source="local")
    with pytest.raises(ValidationError, match="cannot both be 0"):
        DistillConfig(alpha_ce=0.0, alpha_squad=0.0)
    with pytest.raises(ValidationError, match="greater than 0"):
        TrainSpec(learning_rate=0)
    with pytest.raises(ValidationError, match="duplicates"):
        StudentConfig(layers=(1, 1))
    with pytest.raises(ValidationError, match="extra"):
        DataConfig(sauce="local")
    assert DataConfig(max_questions=10).max_questions == 10


def test_pydantic_errors_become_one_line_with_the_dotted_key(params_path, tmp_path):
    with pytest.raises(ValidationError) as info:
        StudentConfig(layers=(0, -1))
    line = error_line(info.value.errors()[0], "student")
    assert line == "invalid params: student.layers[1] must be greater than or equal to 0 (got -1)"
    with pytest.raises(StudyError) as info:
        load_config(params_path, "smoke", ["teacher.train.epochs=true"])
    assert str(info.value) == "invalid params: teacher.train.epochs must be a number (got True)"
    with pytest.raises(StudyError) as info:
        load_config(params_path, "smoke", ["search.temperature=[0, 3, true]"])
    assert str(info.value) == "invalid params: search.temperature.low must be > 0 for a log range"
    with pytest.raises(StudyError) as info:
        validate_distill_weights(1.0, 0.0, 0.0, "trial")
    assert str(info.value) == "invalid params: trial.alpha_ce and alpha_squad cannot both be 0"
    (tmp_path / "params.yaml").write_text("data: {max_questions: 5}\n")
    with pytest.raises(StudyError, match="missing params key 'seed'"):
        load_config(tmp_path / "params.yaml")


def test_hash_is_stable(params_path):
    # Tagged on every run; pinned so that a change to how the hash is computed is deliberate.
    # (Changed by the renames seeds.seeds -> seeds.values, pruner_warmup_steps -> _rounds,
    # and by the default recipe and search settings the smoke profile inherits; then by
    # search.timeout -> search.batch and the fixed thread counts.)
    assert load_config(params_path, "smoke").hash() == "8be8b6bae4086772"
    assert load_config(params_path, "smoke", ["seed=43"]).hash() != "7104f0761399c096"


def test_yaml_typing_of_set_values(params_path):
    cfg = load_config(params_path, "smoke", ["teacher.train.learning_rate=1e-4",
                                             "search.temperature=[2, 3]"])
    assert cfg.teacher.train.learning_rate == pytest.approx(1e-4)  # YAML reads 1e-4 as a str
    assert (cfg.search.temperature.low, cfg.search.temperature.high) == (2.0, 3.0)
    with pytest.raises(StudyError, match="search.keep_weights"):
        load_config(params_path, "smoke", ["search.keep_weights=1"])
