"""The README's report command in a fresh clone: it rebuilds reports/ from the committed
result files in seconds, runs no upstream stage (the clone has no models or caches), and
leaves `git status` clean (the report is byte-stable and dvc.lock is current).

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
from conftest import REPO_ROOT

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


def test_readme_report_command_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(REPO_ROOT), str(clone))
    # The clone's own code, whichever checkout `study` was installed from.
    env = {**os.environ, "PYTHONPATH": str(clone), "DVC_NO_ANALYTICS": "1",
           "HF_HUB_OFFLINE": "1"}
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
