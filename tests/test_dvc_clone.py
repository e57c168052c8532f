"""In a fresh clone: the README's report command rebuilds reports/ from the committed result
files in seconds, runs no upstream stage (the clone has no models or caches), and leaves
`git status` clean (the report is byte-stable and dvc.lock is current); and after `study run`
(on a smoke-sized params.yaml) DVC finds nothing to do.

It clones HEAD: what is committed is what is tested.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO_ROOT

from study.config import deep_merge

pytestmark = pytest.mark.slow


def readme_report_command() -> list[str]:
    """The `dvc repro ... report` line of the README's DVC block."""
    lines = re.findall(r"^(dvc repro [^#\n]*\breport)\s*(?:#.*)?$",
                       (REPO_ROOT / "README.md").read_text(), flags=re.MULTILINE)
    assert len(lines) == 1, f"expected one `dvc repro ... report` line in README.md: {lines}"
    return shlex.split(lines[0])


def git(cwd, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=60).stdout


def fresh_clone(tmp_path) -> tuple:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(REPO_ROOT), str(clone))
    # The clone's own code, whichever checkout `study` was installed from.
    env = {**os.environ, "PYTHONPATH": str(clone), "DVC_NO_ANALYTICS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return clone, env


def run(clone, env, *argv: str, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(argv)}: exit {proc.returncode}\n{out[-4000:]}"
    return out


def test_readme_report_command_in_a_fresh_clone(tmp_path):
    clone, env = fresh_clone(tmp_path)
    argv = readme_report_command()
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    seconds = time.time() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.findall(r"Running stage '([^']+)'", out) == ["report"], out[-3000:]
    assert not (clone / "artifacts").exists(), "an upstream stage wrote artifacts/"
    assert git(clone, "status", "--porcelain") == "", f"the clone changed:\n{git(clone, 'status')}"
    assert seconds < 120, f"{' '.join(argv)} took {seconds:.0f} s"
    print(f"{' '.join(argv)}: {seconds:.1f} s")


def smoke_sized(params: dict) -> dict:
    """The top level (what DVC tracks) with the smoke profile's values, smaller still (one
    trial: the authors' setting, so `seeds` trains two arms; one epoch on 24 questions); the
    stages keep writing where dvc.yaml says."""
    smoke = {k: v for k, v in params["profiles"]["smoke"].items() if k != "runtime"}
    smaller = {"search": {"n_trials": 1}, "data": {"max_questions": 24},
               "student": {"train": {"epochs": 1}}}
    return deep_merge(deep_merge(params, smoke), smaller)


def test_after_study_run_dvc_has_nothing_to_do(tmp_path):
    clone, env = fresh_clone(tmp_path)
    params = clone / "params.yaml"
    params.write_text(yaml.safe_dump(smoke_sized(yaml.safe_load(params.read_text())),
                                     sort_keys=False))
    out = run(clone, env, "study", "run", timeout=1500)  # a bound: 2 cores may be shared
    # Every stage of dvc.yaml ran once, through DVC (in its order), each with its wall time.
    stages = list(yaml.safe_load((clone / "dvc.yaml").read_text())["stages"])
    ran = re.findall(r"Running stage '([^']+)'", out)
    assert sorted(ran) == sorted(stages), out[-3000:]
    times = re.search(r"^== stage wall times \(s\): (.*); total", out, flags=re.MULTILINE)
    assert times, out[-3000:]
    assert [item.split()[0] for item in times[1].split(", ")] == ran
    print(times[0])  # with -s: each stage's wall time

    status = run(clone, env, "dvc", "status")
    assert "Data and pipelines are up to date." in status, status
    dry = run(clone, env, "dvc", "repro", "--dry")
    assert "Running stage" not in dry, dry
    assert len(re.findall(r"Stage '[^']+' didn't change", dry)) == len(stages), dry
