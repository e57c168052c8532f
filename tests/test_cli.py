"""The real `study` CLI on the smoke profile, as a subprocess in a fresh folder.

Slow (tens of seconds per training stage); each training is shared by the tests of
this module through module-scoped fixtures.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, study_command

from study.cli import RUN_CHAIN, main
from study.config import load_config
from study.layout import Layout

pytestmark = pytest.mark.slow

SMOKE = Layout.of(load_config(REPO_ROOT / "params.yaml", "smoke"))


def study(cwd: Path, *args: str, profile: str | None = "smoke", env: dict | None = None,
          timeout: int = 600, params: Path | None = None) -> subprocess.CompletedProcess:
    cmd, full_env = study_command(*args, profile=profile, env=env, params=params)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (the outputs that must not change)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{proc.stderr[-3000:]}"
    assert "error:" in lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """The README's main job on the smoke profile (the whole study), then `study distill`."""
    cwd = tmp_path_factory.mktemp("full")
    proc = ok(study(cwd, "run"))
    ran = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("== study ")]
    assert ran == list(RUN_CHAIN) and "seeds" in ran and "distill" not in ran
    ok(study(cwd, "distill"))
    return cwd


def test_the_main_job_compares_three_arms_over_seeds(full_run):
    seeds = json.loads((full_run / SMOKE.reports.seeds).read_text())
    for arm in ("baseline", "authors", "distilled"):
        assert len(seeds[arm]["f1"]) == len(seeds["seeds"]) == 3, arm
        lo, hi = seeds[arm]["ci95"]["f1"]
        assert lo <= seeds[arm]["mean"]["f1"] <= hi
    assert seeds["authors_params"] == {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5}
    assert set(seeds["paired"]) == {"authors_minus_baseline", "distilled_minus_authors",
                                    "distilled_minus_baseline"}
    for name, diff in seeds["paired"].items():
        lo, hi = diff["ci95"]
        assert lo <= diff["f1_diff"] <= hi, name
    assert (full_run / SMOKE.reports.report).exists()


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory) -> Path:
    """A second fresh folder: prepare, then baseline, as two commands."""
    cwd = tmp_path_factory.mktemp("baseline")
    ok(study(cwd, "prepare"))
    ok(study(cwd, "baseline"))
    return cwd


def test_run_writes_every_stage(full_run):
    art = full_run / SMOKE.artifacts
    split = json.loads((full_run / SMOKE.data.manifest).read_text())
    assert {k: v["questions"] for k, v in split["splits"].items()} == {"train": 40, "tune": 40, "dev": 40}
    for name in ("train", "tune", "dev"):
        assert (full_run / SMOKE.data.split(name)).exists()
    for stage, folder in (("teacher", SMOKE.teacher), ("baseline", SMOKE.baseline),
                          ("distill", SMOKE.distill)):
        metrics = json.loads((full_run / folder.metrics).read_text())
        assert metrics["role"] == stage and metrics["profile"] == "smoke"
        for split_name in ("tune", "dev"):
            for key in ("exact_match", "f1"):
                assert 0.0 <= metrics[split_name][key] <= 100.0, (stage, split_name, key)
        preds = json.loads((full_run / folder.predictions("dev")).read_text())
        dev = json.loads((full_run / SMOKE.data.split("dev")).read_text())
        dev_ids = {qa["id"] for a in dev["data"]
                   for p in a["paragraphs"] for qa in p["qas"]}
        assert set(preds) == dev_ids
        assert (full_run / folder.model / "model.safetensors").stat().st_size > 1000
        assert metrics["steps"] > 0
    distill = json.loads((full_run / SMOKE.distill.metrics).read_text())
    assert distill["distill"]["alpha_ce"] == 0.5 and distill["distill"]["temperature"] == 2.0
    # The student is smaller than the teacher (one layer of six).
    teacher = json.loads((full_run / SMOKE.teacher.metrics).read_text())
    assert distill["parameters"] < teacher["parameters"]
    # No staging leftovers.
    assert not [p.name for p in art.iterdir() if p.name.startswith(".")]


def test_prepare_and_baseline_are_deterministic(full_run, baseline_run):
    a = json.loads((full_run / SMOKE.baseline.metrics).read_text())
    b = json.loads((baseline_run / SMOKE.baseline.metrics).read_text())
    assert a["dev"] == b["dev"] and a["tune"] == b["tune"]
    assert (full_run / SMOKE.data.manifest).read_bytes() == \
        (baseline_run / SMOKE.data.manifest).read_bytes()
    pa = (full_run / SMOKE.baseline.predictions("dev")).read_text()
    pb = (baseline_run / SMOKE.baseline.predictions("dev")).read_text()
    assert pa == pb


@pytest.mark.parametrize("args, profile, needles", [
    (["prepare"], "nope", ["unknown profile 'nope'"]),
    (["distill", "--set", "distill.temperature=-1"], "smoke", ["distill.temperature"]),
    (["distill", "--alpha-ce", "0", "--alpha-squad", "0"], "smoke", ["cannot both be 0"]),
    (["prepare", "--set", "data.source=local", "--set", "data.path=missing.json"], "smoke",
     ["missing.json"]),
    (["baseline", "--set", "student.init=/nonexistent/path"], "smoke", ["/nonexistent/path"]),
], ids=["unknown-profile", "negative-temperature", "zero-weights", "missing-local-data",
        "missing-student-init"])
def test_errors_are_one_line_and_leave_outputs_untouched(baseline_run, args, profile, needles,
                                                          monkeypatch, capsys):
    # In-process through main(): the same parser, dispatch and error path, no new interpreter.
    before = snapshot(baseline_run / "artifacts")
    metrics = (baseline_run / SMOKE.baseline.metrics).read_bytes()
    monkeypatch.chdir(baseline_run)
    code = main([*args, "--params", str(REPO_ROOT / "params.yaml"), "--profile", profile])
    err = capsys.readouterr().err
    assert code == 2
    assert_one_line_error(subprocess.CompletedProcess(args, code, "", err), *needles)
    assert snapshot(baseline_run / "artifacts") == before
    assert (baseline_run / SMOKE.baseline.metrics).read_bytes() == metrics


def test_paper_profile_offline_says_hub_and_local(tmp_path):
    proc = study(tmp_path, "prepare", profile="paper", env={"HF_HUB_OFFLINE": "1"})
    line = assert_one_line_error(proc, "hub", "local")
    assert "squad" in line
    assert not (tmp_path / "artifacts" / "paper" / "data").exists()


def test_teacher_before_prepare_says_run_prepare(tmp_path):
    proc = study(tmp_path, "teacher")
    assert_one_line_error(proc, "run `study prepare`")
    assert not (tmp_path / SMOKE.teacher.root).exists()


def test_bench_gpu_without_a_gpu_says_it_needs_one(tmp_path):
    """On a machine with no CUDA GPU (CUDA_VISIBLE_DEVICES empty hides any), one line, exit 2,
    and reports/bench.json untouched."""
    proc = study(tmp_path, "bench", "--gpu", env={"CUDA_VISIBLE_DEVICES": ""})
    assert_one_line_error(proc, "needs a CUDA GPU")
    assert proc.returncode == 2
    assert not (tmp_path / SMOKE.reports.bench).exists()


def test_seeds_trains_only_what_runs_json_lacks_two_at_a_time(full_run):
    """After an interruption (here: two recorded trainings removed), `seeds` trains only the
    missing ones, side by side in two processes, and every number comes out as before."""
    before = json.loads((full_run / SMOKE.reports.seeds).read_text())
    recorded = json.loads((full_run / SMOKE.seed_runs).read_text())
    del recorded["runs"]["baseline"]["1"], recorded["runs"]["authors"]["3"]
    (full_run / SMOKE.seed_runs).write_text(json.dumps(recorded))
    proc = ok(study(full_run, "seeds", "--set", "runtime.processes=2"))
    trained = sorted(line.split(":")[0] for line in proc.stdout.splitlines()
                     if line.startswith("seed "))
    assert trained == ["seed 1 baseline", "seed 3 authors"]
    after = json.loads((full_run / SMOKE.reports.seeds).read_text())
    for arm in ("baseline", "authors", "distilled"):
        assert after[arm]["f1"] == before[arm]["f1"], arm
        assert after[arm]["exact_match"] == before[arm]["exact_match"], arm
    for name, diff in after["paired"].items():
        assert (diff["f1_diff"], diff["ci95"]) == (before["paired"][name]["f1_diff"],
                                                  before["paired"][name]["ci95"]), name


def test_seeds_add_trains_only_the_new_seeds_and_pools_them(full_run):
    # Last in this module: it adds a seed to the main job's result, and records it in its
    # params file (a copy: never the repository's), then regenerates the report here, in this
    # process (no DVC repository).
    before = json.loads((full_run / SMOKE.reports.seeds).read_text())
    params = full_run / "params-copy.yaml"
    params.write_bytes((REPO_ROOT / "params.yaml").read_bytes())
    assert_one_line_error(study(full_run, "seeds", "--add", "0", params=params), "--add", "got 0")
    proc = ok(study(full_run, "seeds", "--add", "1", params=params))
    trained = [line for line in proc.stdout.splitlines() if line.startswith("seed ")]
    # Seeds 1-3 not re-trained; the distilled arm is the authors' own trainings when the
    # search's best is the authors' setting.
    arms = ["baseline", "authors"] + ([] if before["params"] == before["authors_params"]
                                      else ["distilled"])
    assert [line.split(":")[0] for line in trained] == [f"seed 4 {arm}" for arm in arms]
    assert load_config(params, "smoke").seeds.values == (1, 2, 3, 4)
    assert "== no dvc.lock updated (not at the root of a DVC repository)" in proc.stdout
    after = json.loads((full_run / SMOKE.reports.seeds).read_text())
    assert after["seeds"] == [1, 2, 3, 4]
    for arm in ("baseline", "authors", "distilled"):
        assert after[arm]["f1"][:3] == before[arm]["f1"] and len(after[arm]["f1"]) == 4
        assert after["mlflow_run_ids"][arm][:3] == before["mlflow_run_ids"][arm]
    for diff in after["paired"].values():
        assert diff["seeds"] == [1, 2, 3, 4] and diff["resampled"] == ["seeds", "questions"]
    # The report followed, from the pooled result.
    assert "Seeds: 1, 2, 3, 4." in (full_run / SMOKE.reports.report).read_text()
