"""dvc.yaml stays in step with params.yaml and the CLI: every params key a stage names exists,
every stage command is a `study` subcommand that answers --help, every code dependency exists."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from study.cli import main
from study.config import load_config

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
STAGES = DVC["stages"]


def param_keys(stage: dict) -> list[str]:
    keys: list[str] = []
    for entry in stage.get("params", []):
        if isinstance(entry, dict):  # {file: [keys]} form
            for file, names in entry.items():
                assert file == "params.yaml", f"params from another file: {file}"
                keys += names
        else:
            keys.append(entry)
    return keys


def paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def test_pipeline_has_the_stages_in_order():
    assert list(STAGES) == ["prepare", "teacher", "baseline", "distill", "search", "best",
                            "seeds", "report"]


@pytest.mark.parametrize("name", list(STAGES))
def test_every_params_key_exists_in_params_yaml(name):
    keys = param_keys(STAGES[name])
    assert keys or name in ("report",), f"stage {name} reads no params"
    for key in keys:
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{name}: params key {key!r} not in params.yaml"
            node = node[part]


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_cmd_is_the_study_cli_and_answers_help(name, capsys):
    argv = shlex.split(STAGES[name]["cmd"])
    assert argv[0] == "study", f"stage {name} does not run the study CLI: {argv}"
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[1:], "--help"])
    assert exit_info.value.code == 0
    assert "--profile" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(STAGES))
def test_code_deps_exist_and_outs_are_produced_upstream(name):
    produced = {p for stage in STAGES.values()
                for p in paths(stage.get("outs")) + paths(stage.get("metrics"))}
    for dep in paths(STAGES[name].get("deps")):
        assert (REPO_ROOT / dep).exists() or dep in produced, f"{name}: dependency {dep} is neither in the repo nor an upstream output"


def test_stage_outputs_are_where_the_default_profile_writes():
    cfg = load_config(REPO_ROOT / "params.yaml")
    art = Path(cfg.artifacts).as_posix()
    for stage in ("prepare", "teacher", "baseline", "distill"):
        for out in paths(STAGES[stage]["outs"]):
            assert out.startswith(art + "/"), f"{stage} writes {out}, the profile writes {art}"


def test_study_run_goes_through_dvc_only_on_what_dvc_yaml_tracks(tmp_path, monkeypatch):
    from study.cli import build_parser, not_what_dvc_tracks

    def reason(*argv: str) -> str | None:
        args = build_parser().parse_args(["run", *argv])
        return not_what_dvc_tracks(load_config(args.params, args.profile, args.overrides), args)

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    assert reason() == "not at the root of a DVC repository"
    (tmp_path / "dvc.yaml").write_text((REPO_ROOT / "dvc.yaml").read_text())
    (tmp_path / ".dvc").mkdir()
    assert reason() is None
    assert reason("--params", "params.yaml", "--profile", "default") is None
    assert reason("--profile", "smoke") == "profile smoke"
    assert reason("--set", "seed=3") == "--set seed=3"
    assert reason("--skip", "seeds") == "--skip seeds"
    assert reason("--params", str(REPO_ROOT / "params.yaml")).startswith("params file")
