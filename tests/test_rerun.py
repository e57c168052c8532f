"""`study rerun`: a recorded run re-trained from what it recorded, every number compared.

The comparison on its own (no training); then, marked slow, on the smoke profile with the real
CLI: one workspace prepared once (teacher, baseline, a two-trial search with a complete and a
pruned trial, the `seeds` stage) and one copy of it as on another machine; the refusals
in-process, on light copies of its store and data."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from conftest import REPO_ROOT, study_command
from mlflow.tracking import MlflowClient

from study import rerun
from study.config import load_config
from study.errors import StudyError
from study.layout import Layout

slow = pytest.mark.slow
# Every command of the workspace: one torch thread (recorded, so each rerun trains with it),
# the learning rate searched and batches of one, so trial 1 can be one that the pruner stops
# (against trial 0, a batch before it).
SETTINGS = ("--set", "runtime.threads=1", "--set", "search.batch=1",
            "--set", "search.learning_rate={low: 1.0e-9, high: 1.0e-3, log: true}")
SMOKE = Layout.of(load_config(REPO_ROOT / "params.yaml", "smoke"))
EXPERIMENT = "kd-qa-smoke"


def cli(ws: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd, env = study_command(*args, *SETTINGS)
    res = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=1800)
    if check:
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def client(ws: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlruns' / 'mlflow.db'}")


def runs(ws: Path, role: str) -> list:
    c = client(ws)
    exp = c.get_experiment_by_name(EXPERIMENT)
    return c.search_runs([exp.experiment_id], filter_string=f"tags.role = '{role}'",
                         max_results=500)


def verdict_line(res: subprocess.CompletedProcess) -> str:
    return next(line for line in res.stdout.splitlines()
                if line.startswith(("identical:", "different:")))


def numbers(line: str) -> int:
    return int(line.split()[1]) if line.startswith("identical:") else int(line.split()[3])


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rerun-ws")
    for stage in ("prepare", "teacher", "baseline"):
        cli(root, stage)
    # Trial 1 barely moves its weights (lr 1e-9): its first tune F1 stays below trial 0's and
    # the pruner stops it there. Trial 0 is the authors' setting, so it is also the searched
    # best, and `seeds` trains two arms (baseline, authors) with three seeds.
    db = root / SMOKE.search.root / "optuna.db"
    db.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="kd-search", storage=f"sqlite:///{db}",
                                direction="maximize")
    authors = {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.5}
    study.enqueue_trial({**authors, "learning_rate": 3e-4}, user_attrs={"arm": "authors"})
    study.enqueue_trial({**authors, "learning_rate": 1e-9})
    cli(root, "search", "--n-trials", "2")
    assert [t.state.name for t in optuna.load_study(study_name="kd-search",
                                                    storage=f"sqlite:///{db}").trials] \
        == ["COMPLETE", "PRUNED"]
    cli(root, "seeds")
    return root


def copy_of(ws: Path, dst: Path, *, models: bool) -> Path:
    """The workspace on another machine: its store and artifacts copied (the trained models
    only when the test trains)."""
    shutil.copytree(ws / "mlruns", dst / "mlruns")
    if models:
        shutil.copytree(ws / "artifacts", dst / "artifacts")
    else:
        for folder in (SMOKE.data.root, SMOKE.seed_runs.parent):
            shutil.copytree(ws / folder, dst / folder)
        (dst / SMOKE.search.root).mkdir()
        shutil.copy2(ws / SMOKE.search.root / "optuna.db", dst / SMOKE.search.root)
        (dst / SMOKE.teacher.root).symlink_to(ws / SMOKE.teacher.root)
    return dst


def artifacts_in(copy: Path, ws: Path, run_id: str) -> Path:
    """A run's artifact folder in a copy of the workspace (its store may still name ws's)."""
    recorded = Path(client(ws).get_run(run_id).info.artifact_uri[len("file://"):])
    return copy / recorded.relative_to(ws.resolve())


def baseline_run_id(ws: Path) -> str:
    return json.loads((ws / SMOKE.baseline.metrics).read_text())["mlflow_run_id"]


def trial_run_id(ws: Path, number: int) -> str:
    study = optuna.load_study(study_name="kd-search",
                              storage=f"sqlite:///{ws / SMOKE.search.root / 'optuna.db'}")
    return study.trials[number].user_attrs["mlflow_run_id"]


# ------------------------------------------------------------------ comparing (no training)
class Run:
    """What `recorded_threads` reads of an MLflow run."""

    def __init__(self, **tags: str):
        self.data = type("Data", (), {"tags": tags})()


def test_a_number_is_compared_with_every_value_recorded_at_its_step():
    c = rerun.Comparison()
    # Logged twice at one step (a step evaluation and the final score): both are recorded.
    c.add("metric values", "tune_f1 @ step 9", [6.25, 6.25], [6.25])
    # A pruned trial's rerun also scores its model after the stop: not recorded, not compared.
    c.add("metric values", "tune_f1 @ step 18", [7.5], [7.5, 8.0])
    assert (c.numbers, c.rows) == (2, [])
    c.add("metric values", "loss @ step 2", [4.70781946182251], [4.707819938659668])
    c.add("answers", "answer dev q1", ["Denver Broncos"], [])
    assert c.numbers == 4 and c.sources == {"metric values": 3, "answers": 1}
    assert c.rows == [rerun.Row("loss @ step 2", 4.70781946182251, 4.707819938659668),
                      rerun.Row("answer dev q1", "Denver Broncos", None)]
    lines = rerun.report(c, [("torch_threads", "1", "2")])
    assert lines[0].split() == ["number", "recorded", "now", "difference"]
    assert lines[1].split() == ["loss", "@", "step", "2", "4.70781946182251",
                                "4.707819938659668", "+4.77e-07"]
    assert lines[2].split() == ["answer", "dev", "q1", "'Denver", "Broncos'", "(none)"]
    assert lines[-1].split() == ["torch_threads", "1", "2"]


def test_the_environment_shows_what_differs_and_threads_once():
    recorded = {"git_commit": "a" * 40, "device": "cpu (x86_64, 1 threads)",
                "torch_threads": "1", "version.torch": "2.13.0", "version.dvc": "3.67.1"}
    now = {**recorded, "device": "cpu (x86_64, 2 threads)", "torch_threads": "2",
           "cpu_capability": "AVX2", "version.dvc": "absent"}
    assert rerun.environment_rows(recorded, now) == [
        ("torch_threads", "1", "2"), ("cpu_capability", "(not recorded)", "AVX2"),
        ("version.dvc", "3.67.1", "absent")]


def test_the_thread_count_is_read_from_the_tag_then_config_then_device():
    config = {"runtime": {"threads": 3}}
    assert rerun.recorded_threads(Run(torch_threads="1", device="cpu (x, 2 threads)"),
                                  config) == 1
    assert rerun.recorded_threads(Run(device="cpu (x, 2 threads)"), config) == 3
    assert rerun.recorded_threads(Run(device="cpu (x, 2 threads)"),
                                  {"runtime": {"threads": 0}}) == 2
    assert rerun.recorded_threads(Run(device="NVIDIA H100"), {}) is None


# ------------------------------------------------------------------ identical
@slow
def test_a_pruned_trial_reruns_to_the_step_it_was_stopped_at(ws):
    res = cli(ws, "rerun", "trial", "1")
    assert "as pruned" in res.stdout
    line = verdict_line(res)
    assert line.startswith("identical: "), res.stdout[-3000:]
    assert "answers" not in line  # a pruned trial recorded no answers


@slow
def test_a_seeds_training_reruns_identical_with_its_per_question_scores(ws):
    res = cli(ws, "rerun", "seeds", "authors", "2")
    line = verdict_line(res)
    assert line.startswith("identical: "), res.stdout[-3000:]
    assert "82 runs.json" in line  # EM, F1 and both scores of each of the 40 dev questions


@pytest.fixture(scope="module")
def elsewhere(ws, tmp_path_factory) -> Path:
    """The workspace copied as to another machine: checkout-relative store and artifacts.
    Each test that edits it edits a run of its own."""
    return copy_of(ws, tmp_path_factory.mktemp("elsewhere"), models=True)


@slow
def test_the_baseline_reruns_identical(ws):
    res = cli(ws, "rerun", baseline_run_id(ws))
    line = verdict_line(res)
    assert line.startswith("identical: ") and "80 answers" in line, res.stdout[-3000:]


@slow
def test_a_search_trial_reruns_identical_as_its_own_run_in_a_copied_store(ws, elsewhere):
    res = cli(elsewhere, "rerun", "trial", "0")
    line = verdict_line(res)
    assert line.startswith("identical: "), res.stdout[-3000:]
    # Losses, curves and scores at every step, 40 + 40 answers, metrics.json, Optuna's numbers.
    for source in ("metric values", "80 answers", "metrics.json", "Optuna trial"):
        assert source in line, line
    assert numbers(line) > 150
    recorded = trial_run_id(ws, 0)
    (mine,) = [r for r in runs(elsewhere, "rerun") if r.data.tags["rerun_of"] == recorded]
    assert mine.data.tags["verdict"] == "identical" and mine.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in mine.data.tags  # not nested under the study
    assert mine.data.tags["torch_threads"] == "1"
    for tag in ("teacher_sha256", "teacher_cache_key", "teacher_cache_sha256"):
        assert mine.data.tags[tag] == client(ws).get_run(recorded).data.tags[tag], tag
    # Recorded in the copy's store, its artifacts in the copy's folder; the original store
    # is untouched.
    assert mine.info.artifact_uri.startswith((elsewhere / "mlruns").resolve().as_uri())
    assert not [r for r in runs(ws, "rerun") if r.data.tags["rerun_of"] == recorded]


@slow
def test_an_edited_config_json_gives_a_table_of_the_numbers_that_differ(ws, elsewhere):
    run_id = trial_run_id(ws, 1)  # the pruned trial: the shortest training
    config = artifacts_in(elsewhere, ws, run_id) / "config.json"
    doc = json.loads(config.read_text())
    doc["distill"]["temperature"] = 4.0  # one recorded setting changed
    config.write_text(json.dumps(doc))
    res = cli(elsewhere, "rerun", run_id, check=False)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    out = res.stdout.splitlines()
    assert verdict_line(res).startswith("different: ")
    header = next(i for i, line in enumerate(out) if line.startswith("number "))
    assert out[header].split() == ["number", "recorded", "now", "difference"]
    assert any(line.startswith("loss_kd @ step 2 ") for line in out[header:])
    assert any(line.startswith("environment: no difference") for line in out)
    (mine,) = [r for r in runs(elsewhere, "rerun")
               if r.data.tags["rerun_of"] == run_id and r.data.tags["verdict"] == "different"]
    assert int(mine.data.tags["rerun_differ"]) > 0


@slow
def test_another_thread_count_and_commit_show_beside_the_numbers(ws, elsewhere):
    run_id = baseline_run_id(ws)
    client(elsewhere).set_tag(run_id, "git_commit", "0" * 40)
    res = cli(elsewhere, "rerun", run_id, "--threads", "2", "--any-commit", check=False)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    out = res.stdout.splitlines()
    env = out[next(i for i, line in enumerate(out) if line.startswith("environment ")):]
    assert ["torch_threads", "1", "2"] in [line.split() for line in env]
    assert any(line.split()[:2] == ["git_commit", "0" * 40] for line in env)
    assert any(line.startswith(("loss @ step ", "grad_norm @ step ")) for line in out)


# ------------------------------------------------------------------ refusals
@pytest.fixture
def light_copy(ws, tmp_path, monkeypatch) -> Path:
    """A copy of the store and the data (the teacher linked): enough to be refused, in-process."""
    copy = copy_of(ws, tmp_path / "elsewhere", models=False)
    monkeypatch.chdir(copy)
    return copy


def refused(*words: str, any_commit: bool = False) -> str:
    cfg = load_config(REPO_ROOT / "params.yaml", "smoke", [SETTINGS[1], SETTINGS[3]])
    with pytest.raises(StudyError) as caught:
        rerun.run(cfg, list(words), any_commit=any_commit)
    return str(caught.value)


@slow
def test_unknown_runs_trials_and_seeds_are_refused(ws, light_copy):
    assert "no run 0123" in refused("0123456789abcdef0123456789abcdef")
    assert "has no trial 7" in refused("trial", "7")
    assert "trial N must be a whole number" in refused("trial", "best")
    assert "no arm 'nope'" in refused("seeds", "nope", "1")
    assert "no seed 9 of arm 'authors'" in refused("seeds", "authors", "9")
    assert "RUN is an MLflow run id" in refused("seeds", "authors")
    (study_run,) = runs(light_copy, "study")
    assert "is a study run, not a training" in refused(study_run.info.run_id)
    assert len(runs(light_copy, "rerun")) == len(runs(ws, "rerun"))  # nothing was recorded


@slow
def test_a_run_without_its_config_json_is_refused(ws, light_copy):
    run_id = baseline_run_id(ws)
    (artifacts_in(light_copy, ws, run_id) / "config.json").unlink()
    assert "lacks what a rerun needs: its config.json" in refused(run_id)


@slow
def test_data_that_no_longer_hash_the_same_are_refused(ws, light_copy):
    dev = light_copy / SMOKE.data.split("dev")
    doc = json.loads(dev.read_text())
    doc["data"][0]["paragraphs"][0]["qas"][0]["question"] += " (edited)"
    dev.write_text(json.dumps(doc))
    message = refused(baseline_run_id(ws))
    assert "the data no longer hash as run" in message and "dev (recorded" in message


@slow
def test_another_teacher_is_refused(ws, light_copy):
    run_id = trial_run_id(ws, 0)
    client(light_copy).set_tag(run_id, "teacher_sha256", "f" * 64)
    assert "is not the one run" in refused("trial", "0")


@slow
def test_another_commit_is_refused_in_one_line_unless_any_commit(ws, light_copy):
    run_id = baseline_run_id(ws)
    client(light_copy).set_tag(run_id, "git_commit", "0" * 40)
    res = cli(light_copy, "rerun", run_id, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"study rerun: error: run {run_id} was trained by commit {'0' * 40}, this checkout is "
        f"unknown: check out {'0' * 40}, or pass --any-commit to compare anyway"]
