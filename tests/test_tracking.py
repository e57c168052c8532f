"""The one owner of MLflow runs, on a real SQLite store: how each way a block ends maps to
the run's status, the study's shared parent run, and that no other module sets a status.
Also the environment recorded on every run: the dirty flag means code or params changed."""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import make_tiny_distilbert_qa
from mlflow.entities import ViewType

from study.best import log_registered_model
from study.config import load_config
from study.modeling import save_model
from study.predict import load_answerer
from study.tracking import Tracker, git_state

STUDY = Path(__file__).resolve().parents[1] / "study"
# Calls that start, resume or end a run, or set its status.
LIFECYCLE_CALLS = {"set_terminated", "update_run", "delete_run", "end_run", "start_run"}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory, params_path):
    # One store for the module: creating its tables takes seconds; each test has its own runs.
    root = tmp_path_factory.mktemp("lifecycle")
    cfg = load_config(params_path, "smoke", [f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
                                             f"tracking.artifact_location={root / 'artifacts'}"])
    previous = mlflow.get_tracking_uri()
    yield Tracker(cfg)
    mlflow.set_tracking_uri(previous)


def ended(tracker: Tracker, run_id: str):
    run = tracker.client.get_run(run_id)
    return run.info.status, run.data.tags


def test_a_block_that_returns_finishes_its_run(tracker):
    with tracker.run("ok", "teacher", params={"seed": 3}) as handle:
        assert ended(tracker, handle.run_id)[0] == "RUNNING"
    status, tags = ended(tracker, handle.run_id)
    assert status == "FINISHED" and tags["role"] == "teacher"
    assert not {"failure_reason", "optuna_state", "prune_reason"} & set(tags)


def test_a_run_samples_mlflows_system_metrics_while_it_runs(tracker, monkeypatch):
    """CPU and memory use land in every run (GPU use too where there is one), so the UI
    shows a starved GPU; sampled until the block ends, then the run ends."""
    import time

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with tracker.run("busy", "baseline") as handle:
        end = time.time() + 1.5
        while time.time() < end:
            sum(i * i for i in range(10_000))
    status, _ = ended(tracker, handle.run_id)
    assert status == "FINISHED"
    history = tracker.client.get_metric_history(handle.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2
    assert tracker.client.get_metric_history(handle.run_id, "system/system_memory_usage_megabytes")


def test_a_pruned_trial_finishes_tagged_pruned(tracker):
    pruned = optuna.TrialPruned("pruned at evaluation 2 (tune F1 3.00)")
    with pytest.raises(optuna.TrialPruned) as caught, tracker.run("trial-1", "trial") as handle:
        raise pruned
    assert caught.value is pruned  # passed on unchanged: Optuna records the trial PRUNED
    status, tags = ended(tracker, handle.run_id)
    assert status == "FINISHED"
    assert tags["optuna_state"] == "PRUNED"
    assert tags["prune_reason"] == "pruned at evaluation 2 (tune F1 3.00)"
    assert "failure_reason" not in tags
    # MLflow has no PRUNED status: the name beside it and the description say so.
    assert tracker.client.get_run(handle.run_id).info.run_name == "trial-1 (pruned)"
    assert "Pruned by Optuna" in tags["mlflow.note.content"]
    assert "pruned at evaluation 2" in tags["mlflow.note.content"]
    # Plain text: the runs table shows a description's raw text in its cell.
    assert not any(mark in tags["mlflow.note.content"] for mark in ("**", "`", "|", "\n"))


def test_ctrl_c_kills_the_run(tracker):
    with pytest.raises(KeyboardInterrupt), tracker.run("baseline", "baseline") as handle:
        raise KeyboardInterrupt
    status, tags = ended(tracker, handle.run_id)
    assert status == "KILLED" and tags["failure_reason"] == "interrupted"


def test_an_error_fails_the_run_with_its_reason(tracker):
    error = FloatingPointError("training loss became nan at step 7")
    with pytest.raises(FloatingPointError) as caught, tracker.run("distill", "distill") as handle:
        raise error
    assert caught.value is error
    status, tags = ended(tracker, handle.run_id)
    assert status == "FAILED"
    assert tags["failure_reason"] == "FloatingPointError: training loss became nan at step 7"


def test_on_end_sees_the_outcome_while_the_run_is_still_open(tracker):
    seen = []

    def on_end(handle, outcome):
        seen.append((outcome.status, outcome.reason, outcome.pruned,
                     ended(tracker, handle.run_id)[0]))
        handle.set_tags({"optuna_state": "FAIL"})

    with pytest.raises(ValueError), tracker.run("trial-2", "trial", on_end=on_end) as handle:
        raise ValueError("bad weights")
    assert seen == [("FAILED", "ValueError: bad weights", False, "RUNNING")]
    status, tags = ended(tracker, handle.run_id)
    assert status == "FAILED" and tags["optuna_state"] == "FAIL"


def test_the_shared_parent_run_is_created_once_then_resumed(tracker):
    claimed: list[str] = []

    def claim(run_id):
        claimed.append(run_id)
        return claimed[0]

    with tracker.shared_run("study-s", "study", None, claim, tags={"study_name": "s"}) as first:
        pass
    assert claimed == [first.run_id] and ended(tracker, first.run_id)[0] == "FINISHED"
    # A later session finds it through what was recorded: no new run, and it runs again.
    with tracker.shared_run("study-s", "study", first.run_id, claim) as again:
        assert again.run_id == first.run_id
        assert ended(tracker, first.run_id)[0] == "RUNNING"
    assert len(claimed) == 1 and ended(tracker, first.run_id)[0] == "FINISHED"
    # Interrupted, the shared run is KILLED like any other.
    again = tracker.shared_run("study-s", "study", first.run_id, claim)
    with pytest.raises(KeyboardInterrupt), again:
        raise KeyboardInterrupt
    assert ended(tracker, first.run_id)[0] == "KILLED"


def test_a_worker_that_loses_the_race_deletes_its_run_and_joins_the_winner(tracker):
    race = {"study_name": "race"}
    with tracker.run("study-race", "study", tags=race) as winner:
        pass
    with tracker.shared_run("study-race", "study", None, lambda run_id: winner.run_id,
                            tags=race) as joined:
        assert joined.run_id == winner.run_id
    exp, only_race = [tracker.experiment_id], "tags.study_name = 'race'"
    alive = tracker.client.search_runs(exp, only_race, run_view_type=ViewType.ACTIVE_ONLY)
    deleted = tracker.client.search_runs(exp, only_race, run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_id for r in alive] == [winner.run_id]
    assert len(deleted) == 1 and deleted[0].info.status == "RUNNING"


def test_a_recorded_run_of_another_store_is_replaced_by_a_new_one(tracker):
    with tracker.shared_run("study-s", "study", "0" * 32, lambda run_id: run_id) as handle:
        assert handle.run_id != "0" * 32
    assert ended(tracker, handle.run_id)[0] == "FINISHED"


def test_a_run_that_cannot_be_claimed_is_not_left_running(tracker):
    def claim(run_id):
        claim.run_id = run_id
        raise OSError("study storage unreachable")

    with pytest.raises(OSError), tracker.shared_run("study-x", "study", None, claim):
        pass
    status, tags = ended(tracker, claim.run_id)
    assert status == "FAILED" and tags["failure_reason"] == "OSError: study storage unreachable"


def lifecycle_calls(path: Path) -> list[str]:
    """`name` at `file:line` for every lifecycle call (or import of one) in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        elif isinstance(node, ast.ImportFrom):
            name = next((a.name for a in node.names if a.name in LIFECYCLE_CALLS), None)
        else:
            continue
        if name in LIFECYCLE_CALLS:
            found.append(f"{name} at {path.name}:{node.lineno}")
    return found


def test_only_tracking_starts_ends_or_sets_the_status_of_runs():
    # The scan finds what it looks for: the owner's own calls.
    own = lifecycle_calls(STUDY / "tracking.py")
    assert {c.split()[0] for c in own} >= {"set_terminated", "update_run", "delete_run"}
    others = [c for path in sorted(STUDY.rglob("*.py")) if path.name != "tracking.py"
              or path.parent != STUDY for c in lifecycle_calls(path)]
    assert others == []


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


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_copied_checkout_writes_and_loads_only_its_own_store(tmp_path, monkeypatch,
                                                               params_path, distil_tokenizer):
    # The project's own store settings: sqlite:///mlruns/mlflow.db and mlruns/artifacts,
    # relative to the checkout, with a run, an artifact and a registered champion in it.
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    monkeypatch.chdir(original)
    cfg = load_config(params_path, "smoke")
    previous = mlflow.get_tracking_uri()
    try:
        model_dir = original / "student"
        save_model(make_tiny_distilbert_qa(len(distil_tokenizer)), distil_tokenizer, model_dir)
        with Tracker(cfg).run("best", "best") as handle:
            handle.log_artifact(model_dir / "config.json")
            log_registered_model(handle, model_dir, cfg)
        before = snapshot(original)
        assert any(name.startswith("mlruns/artifacts/") for name in before)

        shutil.copytree(original, copy)
        monkeypatch.chdir(copy)
        tracker = Tracker(cfg)
        with tracker.run("trial-0", "trial") as handle:
            handle.log_artifact(copy / "student" / "config.json")
            handle.log_dict({"a": 1}, "config.json")
        assert snapshot(original) == before, "the copy wrote into the original checkout"
        root = (copy / "mlruns" / "artifacts").as_uri() + "/"
        runs = tracker.client.search_runs([tracker.experiment_id])
        assert len(runs) == 2 and all(r.info.artifact_uri.startswith(root) for r in runs)
        assert (copy / "mlruns" / "artifacts" / handle.run_id / "artifacts" / "config.json").exists()

        # The original gone, the champion loads from the copy's own files and writes there.
        shutil.rmtree(original)
        assert load_answerer(cfg, "models:/kd-qa-student-smoke@champion") is not None
        assert not original.exists(), "loading the champion wrote into the original folder"
        version = tracker.client.get_model_version_by_alias("kd-qa-student-smoke", "champion")
        storage = tracker.client._get_registry_client().store  # the stored location itself
        assert storage.get_model_version_download_uri(version.name, version.version) \
            .startswith(root)
        assert list((copy / "mlruns" / "artifacts").rglob("registered_model_meta"))
    finally:
        mlflow.set_tracking_uri(previous)
