"""params.yaml -> validated, frozen Config."""

from __future__ import annotations

import dataclasses

import pytest

from study.config import Config, DistillConfig, TrainSpec, load_config
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
    assert default.distill == DistillConfig(2.0, 0.5, 0.5, "cache", "float16")
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
    (["seeds.seeds=[1, 2]"], "seeds.seeds"),
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
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.distill.temperature = 9.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.student.train.learning_rate = 1.0
    assert isinstance(cfg.student.layers, tuple)  # no mutable list inside either


def test_replace_validates_and_leaves_original(params_path):
    cfg = load_config(params_path, "smoke")
    new = cfg.replace(distill=dataclasses.replace(cfg.distill, temperature=7.0))
    assert new.distill.temperature == 7.0 and cfg.distill.temperature == 2.0
    with pytest.raises(StudyError, match="distill.temperature"):
        cfg.replace(distill=dataclasses.replace(cfg.distill, temperature=-1.0))
    with pytest.raises(StudyError, match="teacher.train.epochs"):
        cfg.replace(teacher=dataclasses.replace(cfg.teacher, train=TrainSpec(epochs=0)))


def test_yaml_no_is_the_literal_no(params_path):
    # YAML 1.1 reads an unquoted `no` as false; `mixed_precision: no` must still mean "no".
    cfg = load_config(params_path, "smoke", ["runtime.mixed_precision=no"])
    assert cfg.runtime.mixed_precision == "no"
    with pytest.raises(StudyError, match="runtime.mixed_precision"):
        load_config(params_path, "smoke", ["runtime.mixed_precision=yes"])
