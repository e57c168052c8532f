"""The environment recorded on every run: the dirty flag means code or params changed."""

from __future__ import annotations

import subprocess

from study.tracking import git_state


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_pipeline_outputs_do_not_make_the_tree_dirty_code_does(tmp_path, monkeypatch):
    for name in ("dvc.lock", "params.yaml", "reports/metrics.json", "study/x.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.chdir(tmp_path / "study")  # run from a subfolder: the check is repo-wide
    clean = git_state()
    assert clean["git_dirty"] == "false" and len(clean["git_commit"]) == 40

    (tmp_path / "dvc.lock").write_text("b\n")
    (tmp_path / "reports" / "metrics.json").write_text("b\n")
    assert git_state()["git_dirty"] == "false"
    (tmp_path / "params.yaml").write_text("b\n")
    assert git_state()["git_dirty"] == "true"
