"""In a fresh clone: the README's report command rebuilds reports/ from the committed result
files in seconds, runs no upstream stage (the clone has no models or caches), and leaves
`git status` clean (the report is byte-stable and dvc.lock is current); after `study run`
(on a smoke-sized params.yaml) DVC finds nothing to do, and a plain `dvc repro` considers
the default's stages alone when other profiles' pipelines lie beside them; and
`study run --profile smoke` twice: the second runs nothing, `dvc status` of its pipeline is
clean after each.

It clones HEAD: what is committed is what is tested.
"""

from __future__ import annotations

import json
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


SMALLER = {"search": {"n_trials": 1}, "data": {"max_questions": 24},
           "student": {"train": {"epochs": 1}}}


def smoke_sized(params: dict) -> dict:
    """The top level (what DVC tracks) with the smoke profile's values, smaller still (one
    trial: the authors' setting, so `seeds` trains two arms; one epoch on 24 questions); the
    stages keep writing where dvc.yaml says."""
    smoke = {k: v for k, v in params["profiles"]["smoke"].items() if k != "runtime"}
    return deep_merge(deep_merge(params, smoke), SMALLER)


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

    # The paper's pipeline written beside it (`--dry` runs nothing: no hub here): a plain
    # `dvc repro` still considers the default's stages alone, and `dvc status` is truthful:
    # the default's are up to date, the paper's all to run.
    paper = run(clone, env, "study", "run", "--profile", "paper", "--dry")
    assert "pipelines/paper/dvc.yaml:prepare" in paper, paper
    dry = run(clone, env, "dvc", "repro", "--dry")
    assert "Running stage" not in dry, dry
    assert sorted(re.findall(r"Stage '([^']+)' didn't change", dry)) == sorted(stages), dry
    assert "Data and pipelines are up to date." in run(clone, env, "dvc", "status", "dvc.yaml")
    status = json.loads(run(clone, env, "dvc", "status", "--json"))
    assert sorted(status) == sorted(f"pipelines/paper/dvc.yaml:{s}" for s in stages), status
    assert not (clone / "artifacts" / "paper").exists()


def test_study_run_smoke_twice_the_second_runs_nothing(tmp_path):
    """Through DVC (pipelines/smoke/dvc.yaml), on a smaller smoke profile (the overlay, not
    --set, which stays in-process)."""
    clone, env = fresh_clone(tmp_path)
    params = clone / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["smoke"] = deep_merge(raw["profiles"]["smoke"], SMALLER)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    stages = list(yaml.safe_load((clone / "dvc.yaml").read_text())["stages"])
    pipeline = "pipelines/smoke/dvc.yaml"

    first = run(clone, env, "study", "run", "--profile", "smoke", timeout=1500)
    ran = re.findall(r"Running stage '([^']+)'", first)
    assert sorted(ran) == sorted(f"{pipeline}:{s}" for s in stages), first[-3000:]
    print(re.search(r"^== stage wall times.*$", first, flags=re.MULTILINE)[0])
    status = run(clone, env, "dvc", "status", pipeline)
    assert "Data and pipelines are up to date." in status, status

    second = run(clone, env, "study", "run", "--profile", "smoke", timeout=1500)
    assert "Running stage" not in second, second[-3000:]
    unchanged = re.findall(r"Stage '([^']+)' didn't change", second)
    assert sorted(unchanged) == sorted(f"{pipeline}:{s}" for s in stages), second[-3000:]
    status = run(clone, env, "dvc", "status", pipeline)
    assert "Data and pipelines are up to date." in status, status
    # A plain `dvc status` lists default stages (never run in this clone: all but the report,
    # whose inputs and outputs are committed), none of the smoke profile's: they are up to date.
    everything = json.loads(run(clone, env, "dvc", "status", "--json"))
    assert "prepare" in everything and set(everything) <= set(stages), everything
    # The smoke pipeline and its lock stay local: DVC staged the lock (core.autostage),
    # `study run` unstaged it, as git does not track the pipeline file (params.yaml: the
    # smaller overlay above).
    changed = git(clone, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert sorted(changed) == [" M params.yaml", f"?? {pipeline.removesuffix('yaml')}lock",
                               f"?? {pipeline}"], changed
