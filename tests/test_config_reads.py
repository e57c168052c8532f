"""The recorder behind tests/test_dvc_reads.py, on the real Config and on a pydantic tree
(config.py may hold either)."""

from __future__ import annotations

import dataclasses

import pydantic
from config_reads import CodeCalls, ConfigReads

from study.config import load_config


def test_nested_reads_are_recorded_and_validation_is_not(params_path):
    cfg = load_config(params_path, "smoke")
    with ConfigReads(cfg) as reads:
        cfg.hash()
        cfg.to_dict()
        cfg.replace(seed=7)
        assert reads.keys == set()
        assert cfg.student.train.epochs > 0 and cfg.search.temperature.low > 0
        assert cfg.teacher.train.epochs > 0  # same class as student.train, its own key
        _ = cfg.artifacts  # a property reads runtime.artifacts
        _ = cfg.profile  # not a params key
    assert reads.keys == {"student.train.epochs", "teacher.train.epochs",
                          "search.temperature.low", "runtime.artifacts"}
    _ = cfg.seed  # unpatched afterwards
    assert "seed" not in reads.keys


def test_fields_a_copy_sets_are_not_params_reads(params_path):
    """A trial's config: its sampled temperature comes from the code, the rest from params."""
    cfg = load_config(params_path, "smoke")
    with ConfigReads(cfg) as reads:
        if hasattr(cfg.distill, "replace"):  # pydantic sections
            distill = cfg.distill.replace(temperature=3.0)
        else:
            distill = dataclasses.replace(cfg.distill, temperature=3.0)
        trial = cfg.replace(distill=distill)
        assert trial.distill.temperature == 3.0
        assert trial.distill.teacher_logits == cfg.distill.teacher_logits
    assert reads.keys == {"distill.teacher_logits"}


class Inner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)
    low: float = 1.0
    high: float = 2.0


class Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)
    name: str = "x"
    span: Inner = Inner()
    other: Inner = Inner()


class Root(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)
    seed: int = 1
    section: Section = Section()


def test_pydantic_models_are_recorded_the_same_way():
    root = Root()
    with ConfigReads(root) as reads:
        root.model_dump()
        assert reads.keys == set()
        copy = root.model_copy(update={"seed": 3})
        assert copy.section.span.high == 2.0 and root.section.other.low == 1.0
        assert copy.seed == 3  # set by the code, not read from params
        assert root.section.name == "x"
    assert reads.keys == {"section.span.high", "section.other.low", "section.name"}
    assert Root().seed == 1
    assert "seed" not in reads.keys


def test_code_calls_count_functions_run_not_modules_imported(tmp_path, monkeypatch):
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "imported.py").write_text("class Section:\n    x = 1\n\n\ndef unused():\n    return 1\n")
    (pkg / "called.py").write_text("def used():\n    return [i for i in range(2)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with CodeCalls(pkg) as calls:
        import toypkg.called
        import toypkg.imported
        toypkg.called.used()
    assert calls.files == {"called.py"}
