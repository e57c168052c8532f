"""dvc.yaml stays in step with params.yaml and the CLI: every params key a stage names exists,
every stage command is a `study` subcommand that answers --help, every code dependency exists;
and so does every profile's pipeline instantiated from it (study.pipeline)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from study import pipeline
from study.cli import main
from study.config import load_config
from study.pipeline import dvc_file

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
STAGES = DVC["stages"]
PROFILES = ["default", *PARAMS["profiles"]]
# Each profile's pipeline, as `study run --profile NAME` writes it (the default's: dvc.yaml).
PIPELINES = {p: pipeline.instantiate(DVC, REPO_ROOT / "params.yaml", p) for p in PROFILES}


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


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", list(STAGES))
def test_every_params_key_exists_in_params_yaml(name, profile):
    # DVC refuses to run a stage whose params key is missing from params.yaml.
    keys = param_keys(PIPELINES[profile]["stages"][name])
    assert keys or name in ("report",), f"stage {name} reads no params"
    for key in keys:
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, \
                f"{profile} {name}: params key {key!r} not in params.yaml"
            node = node[part]


def test_the_default_profiles_pipeline_is_dvc_yaml_itself():
    assert PIPELINES["default"] == DVC
    assert dvc_file("default").as_posix() == "dvc.yaml"


@pytest.mark.parametrize("profile", [p for p in PROFILES if p != "default"])
def test_a_profiles_pipeline_is_dvc_yaml_for_that_profile(profile):
    """The same stages in the same order, each running `--profile NAME` from the repository
    root, depending on the top-level keys it reads and on the overlay's keys that set them."""
    stages = PIPELINES[profile]["stages"]
    assert list(stages) == list(STAGES)
    assert dvc_file(profile).as_posix() == f"pipelines/{profile}/dvc.yaml"
    overlay = PARAMS["profiles"][profile]
    for name, stage in stages.items():
        assert stage["cmd"] == f"{STAGES[name]['cmd']} --profile {profile}"
        assert (REPO_ROOT / dvc_file(profile).parent / stage["wdir"]).resolve() == REPO_ROOT
        own = [k for k in param_keys(stage) if not k.startswith("profiles.")]
        assert own == param_keys(STAGES[name])
        for key in param_keys(stage):
            if key.startswith("profiles."):
                assert key.startswith(f"profiles.{profile}."), key
                assert key.removeprefix(f"profiles.{profile}.") in pipeline.overlay_keys(
                    key.removeprefix(f"profiles.{profile}."), overlay)


def test_a_stage_depends_on_the_overlay_keys_that_set_what_it_reads():
    smoke = {name: param_keys(stage) for name, stage in PIPELINES["smoke"]["stages"].items()}
    assert {"teacher", "profiles.smoke.teacher", "data.max_length",
            "profiles.smoke.data.max_length"} <= set(smoke["teacher"])
    # `best` reads some search keys, the smoke overlay sets others: only the ones it reads.
    assert {"search.grace_period", "profiles.smoke.search.grace_period"} <= set(smoke["best"])
    assert "profiles.smoke.search.n_trials" not in smoke["best"]
    assert "profiles.smoke.search" in smoke["search"]
    # What the overlay leaves to the top level is the top level's alone.
    assert "runtime.threads" in smoke["teacher"]
    assert not any(k.startswith("profiles.smoke.runtime") for k in smoke["teacher"])
    paper = {name: param_keys(stage) for name, stage in PIPELINES["paper"]["stages"].items()}
    assert "profiles.paper.data" in paper["prepare"]
    assert "profiles.paper.teacher.init" in paper["best"]


@pytest.mark.parametrize(("key", "expected"), [
    ("data.max_length", ["data.max_length"]),         # set by the overlay
    ("data", ["data"]),                               # a section the overlay sets part of
    ("data.source", []),                              # left to the top level
    ("seed", []),
    ("search.temperature.low", ["search.temperature"]),  # set whole, as a list: [low, high]
    ("student.layers", ["student.layers"]),
])
def test_overlay_keys(key, expected):
    overlay = {"data": {"max_length": 128}, "search": {"temperature": [1.0, 5.0]},
               "student": {"layers": None}}
    assert pipeline.overlay_keys(key, overlay) == expected


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
    # Every profile has its pipeline (study.pipeline); --set and --skip stay in-process.
    assert reason("--profile", "smoke") is None
    assert reason("--profile", "paper") is None
    assert reason("--set", "seed=3") == "--set seed=3"
    assert reason("--profile", "smoke", "--set", "seed=3") == "--set seed=3"
    assert reason("--skip", "seeds") == "--skip seeds"
    assert reason("--params", str(REPO_ROOT / "params.yaml")).startswith("params file")
    # A profile writing where another one does cannot have a pipeline beside it: DVC refuses
    # overlapping outputs in every command, the default's included.
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["profiles"]["mine"] = {"data": {"max_questions": 10}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    refused = reason("--profile", "mine")
    assert re.match(r"profile mine writes (reports/\S+), where profile default writes \1 ",
                    refused), refused
    assert reason("--profile", "smoke") is None


def test_a_profiles_pipeline_file_is_written_once_and_not_git_ignored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text((REPO_ROOT / name).read_text())
    assert pipeline.write("default") == dvc_file("default")  # committed, never written
    written = pipeline.write("smoke")
    assert written == dvc_file("smoke")
    doc = yaml.safe_load(written.read_text())
    assert doc == PIPELINES["smoke"]
    os.utime(written, (0, 0))
    pipeline.write("smoke")  # the same again: left as it is
    assert written.stat().st_mtime == 0
    # DVC refuses a git-ignored dvc.yaml or dvc.lock, even in a plain `dvc status`.
    for profile in PROFILES:
        for name in ("dvc.yaml", "dvc.lock"):
            path = (dvc_file(profile).parent / name).as_posix()
            ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT,
                                     check=False).returncode == 0
            assert not ignored, f"{path} is git-ignored: DVC would refuse it"


def dvc(cwd, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_a_plain_dvc_repro_plans_the_default_profile_alone(tmp_path, monkeypatch):
    """In a clone with every profile's pipeline written: a plain `dvc repro` at the root plans
    the default's stages and no other profile's (it collects ./dvc.yaml, and upstream stages
    only through its deps); the paper's stages are addressed through their own file."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True, timeout=120)
    monkeypatch.chdir(clone)
    for profile in PROFILES:
        pipeline.write(profile)
    # `dvc repro --dry` stops at a stage whose inputs are missing: give the default's
    # artifacts folders (empty), so it plans every stage whose outputs are not the locked ones.
    for out in pipeline.outputs(DVC):
        if not out.exists():
            out.mkdir(parents=True)
    dry = dvc(clone, "repro", "--dry")
    planned = re.findall(r"Running stage '([^']+)'", dry)
    unchanged = re.findall(r"Stage '([^']+)' didn't change", dry)
    assert "prepare" in planned, dry
    assert sorted(planned + unchanged) == sorted(STAGES), dry
    status = json.loads(dvc(clone, "status", "--json", "pipelines/paper/dvc.yaml"))
    assert sorted(status) == sorted(f"pipelines/paper/dvc.yaml:{s}" for s in STAGES)
    # A plain `dvc status` lists every pipeline file present, each stage by its address.
    everything = json.loads(dvc(clone, "status", "--json"))
    assert {f"pipelines/smoke/dvc.yaml:{s}" for s in STAGES} <= set(everything)
