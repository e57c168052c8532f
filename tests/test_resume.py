"""A training killed mid-way resumes from its last checkpoint and ends with the numbers of an
uninterrupted one, to the digit (study.fit.Checkpoints, study.trainer.CheckpointState).

The slow test runs the real CLI on the smoke profile twice, in two folders: once straight
through (prepare, teacher, baseline, distill) and once with each training stage SIGKILLed
mid-training and run again. The kill waits for a state, not a time: the child process is the
real `study` command with one Trainer callback added (PAUSE below) that, once the training
has reached step PAUSE_AT (a checkpoint behind it, and training logs after that checkpoint
already sent to MLflow), says so in a file and sleeps; the test then kills it with SIGKILL.
Run again, the stage resumes from the checkpoint, continues the same MLflow run, and must
give the same metrics.json, predictions, weights and MLflow metric histories.

The fast tests cover the scratch folders' ownership (files.owned_dir): a live owner refuses
a second process, a dead one's folder is taken over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, study_command

from study.config import load_config
from study.errors import StudyError
from study.files import owned_dir, scratch_dir, staged_dir
from study.fit import checkpoint_steps, logging_steps
from study.layout import Layout

SMOKE = Layout.of(load_config(REPO_ROOT / "params.yaml", "smoke"))

# Long enough to kill mid-way: 3 epochs of 9 steps each (71 smoke train windows at batch 8),
# logged every 2 steps, checkpointed at steps 10 and 20.
SETS = ("--set", "runtime.threads=1", "--set", "teacher.train.epochs=3",
        "--set", "student.train.epochs=3")
PAUSE_AT = 13  # after checkpoint-10, and after the log at step 12 reached MLflow

# The child: the real CLI, plus a callback that stops the training where the test kills it.
PAUSE = """
import os, sys, time
from pathlib import Path
from transformers import TrainerCallback
import study.fit as fit

class PauseAt(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["PAUSE_AT"]):
            marker = Path(os.environ["PAUSE_MARKER"])
            marker.with_suffix(".tmp").write_text(str(state.global_step))
            marker.with_suffix(".tmp").replace(marker)
            time.sleep(3600)

made = fit.make_trainer
def make_trainer(*args, **kwargs):
    trainer, seconds = made(*args, **kwargs)
    trainer.add_callback(PauseAt())
    return trainer, seconds
fit.make_trainer = make_trainer

from study.cli import main
sys.exit(main(sys.argv[1:]))
"""

TIMING = {"train_seconds", "wall_seconds", "teacher_cache_seconds"}
PER_RUN = {"mlflow_run_id", "resumed_from_step"}  # the run's id; where it resumed


# ------------------------------------------------------------------ scratch folders
HOLD = """
import sys, time
from study.files import owned_dir
with owned_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(3600)
"""


def test_a_live_owner_refuses_a_second_process_and_a_dead_one_is_taken_over(tmp_path):
    folder = tmp_path / ".teacher.tmp"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        (folder / "checkpoints").mkdir()
        with pytest.raises(StudyError, match="in use by another live study process"), \
                owned_dir(folder):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with owned_dir(folder) as got:  # its owner is dead: ours, with what it left
        assert got == folder and (folder / "checkpoints").is_dir()


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    with owned_dir(tmp_path / "s"), pytest.raises(StudyError, match="in use"), \
            owned_dir(tmp_path / "s"):
        pass


def test_staged_dir_keeps_a_dead_runs_scratch_only_when_asked_and_clears_old_orphans(tmp_path):
    final = tmp_path / "teacher"
    scratch = tmp_path / ".teacher.tmp"
    legacy = [tmp_path / ".teacher.tmp-0123abcd", tmp_path / ".teacher.old-89abcdef"]
    for folder in (scratch / "checkpoints", *legacy):
        folder.mkdir(parents=True)
    with staged_dir(final, keep=True) as out:
        assert out == scratch and (out / "checkpoints").is_dir()  # resumable: kept
        (out / "metrics.json").write_text("{}")
    assert (final / "metrics.json").exists() and not scratch.exists()
    assert not any(p.exists() for p in legacy)
    (scratch / "stale").mkdir(parents=True)
    with staged_dir(final) as out:  # not resumable: emptied
        assert not list(out.iterdir())
        (out / "metrics.json").write_text("{}")
    with pytest.raises(RuntimeError), staged_dir(final, keep=True) as out:
        (out / "checkpoints").mkdir()
        raise RuntimeError("killed")
    assert (scratch / "checkpoints").is_dir() and (final / "metrics.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".teacher.tmp", "teacher"]


def test_scratch_dir_is_kept_on_error_and_removed_on_success(tmp_path):
    folder = tmp_path / "seeds" / "authors-1"
    with pytest.raises(KeyboardInterrupt), scratch_dir(folder) as out:
        (out / "checkpoints").mkdir()
        raise KeyboardInterrupt
    assert (folder / "checkpoints").is_dir()
    with scratch_dir(folder) as out:
        assert (out / "checkpoints").is_dir()
    assert not folder.exists()


def test_checkpoints_fall_on_logging_steps_once_an_epoch():
    spec = load_config(REPO_ROOT / "params.yaml").student.train
    for windows in (71, 731, 88_641):
        every, log = checkpoint_steps(windows, spec), logging_steps(windows, spec)
        epoch = -(-windows // spec.batch_size)
        assert every % log == 0 and epoch <= every < epoch + log


# ------------------------------------------------------------------ kill and resume
def run(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd, full_env = study_command(*args, *SETS, env=env)
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def kill_mid_training(cwd: Path, stage: str) -> None:
    """Run `study <stage>` until its training pauses at PAUSE_AT, then SIGKILL it."""
    marker = cwd / f"paused-{stage}"
    cmd, env = study_command(stage, *SETS, env={"PAUSE_AT": str(PAUSE_AT),
                                                 "PAUSE_MARKER": str(marker)})
    cmd = [sys.executable, "-c", PAUSE, *cmd[3:]]  # the same argv, through PAUSE
    child = subprocess.Popen(cmd, cwd=cwd, env={**env, "PYTHONPATH": str(REPO_ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not marker.exists():  # a state, not a time; a child that exits is a failure
            code = child.poll()
            assert code is None, f"study {stage} exited {code} before pausing:\n" \
                                 f"{child.stderr.read()[-3000:]}"
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


def mlflow_histories(cwd: Path, run_id: str) -> tuple[dict, str, dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    run = client.get_run(run_id)
    keep = [k for k in run.data.metrics if not k.startswith("system/")
            and not k.endswith(("_runtime", "_per_second", "_seconds"))]
    return ({k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k),
                                                   key=lambda m: (m.step, m.timestamp))]
             for k in keep}, run.info.status, run.data.tags)


@pytest.mark.slow
def test_a_killed_training_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    for stage in ("prepare", "teacher", "baseline", "distill"):
        run(straight, stage)
    run(killed, "prepare")
    art = killed / SMOKE.artifacts
    for stage, folder in (("teacher", SMOKE.teacher), ("baseline", SMOKE.baseline),
                          ("distill", SMOKE.distill)):
        kill_mid_training(killed, stage)
        scratch = killed / folder.root.with_name(f".{folder.root.name}.tmp")
        ckpt = scratch / "checkpoints"
        assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-10"]
        killed_run = json.loads((ckpt / "run.json").read_text())["mlflow_run_id"]
        assert mlflow_histories(killed, killed_run)[1] == "RUNNING"  # nobody could end it
        run(killed, stage)
        assert not scratch.exists() and not (killed / folder.root / "checkpoints").exists()

        a = json.loads((straight / folder.metrics).read_text())
        b = json.loads((killed / folder.metrics).read_text())
        assert b["resumed_from_step"] == 10 and a["resumed_from_step"] == 0
        assert b["mlflow_run_id"] == killed_run  # the killed run, continued
        drop = TIMING | PER_RUN
        assert {k: v for k, v in b.items() if k not in drop} == \
            {k: v for k, v in a.items() if k not in drop}, stage
        for split in ("tune", "dev"):
            assert (killed / folder.predictions(split)).read_bytes() == \
                (straight / folder.predictions(split)).read_bytes()
        assert (killed / folder.model / "model.safetensors").read_bytes() == \
            (straight / folder.model / "model.safetensors").read_bytes()
        hist_a, status_a, _ = mlflow_histories(straight, a["mlflow_run_id"])
        hist_b, status_b, tags_b = mlflow_histories(killed, b["mlflow_run_id"])
        assert status_a == status_b == "FINISHED"
        assert tags_b["resumed"] == "1" and tags_b["resumed_from_step"] == "10"
        assert hist_b == hist_a, stage  # each metric once per step, the same values
        assert {"loss", "tune_f1", "dev_f1", "train_loss"} <= set(hist_a)
        if stage == "distill":
            assert {"loss_ce", "loss_kd"} <= set(hist_a)
        print(f"{stage}: resumed at step {b['resumed_from_step']} of {b['steps']}: "
              f"{b['resumed_from_step']} steps not trained again")
    assert not [p.name for p in art.iterdir() if p.name.startswith(".")]
