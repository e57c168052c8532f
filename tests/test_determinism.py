"""`study bench --determinism` (study/bench/determinism.py): the comparison and its verdict on
toy numbers and on a real MLflow run; the CPU hogs (one pinned to each core, bounded in time,
killed, gone with the process that started them); the refusals. Then CI's two legs (.ci/run):
the fixture training (the smoke baseline at one thread, tens of seconds) against the committed
fixture, recorded on transformers 5.x: identical on that line, and on the 4.x line exactly the
difference reports/bench.json says that pair of lines makes. Marked slow: the bench itself on
a small run."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from study.bench import determinism
from study.cli import main
from study.config import load_config

FIXTURE = REPO_ROOT / "tests" / "data" / "determinism_transformers5.json"
BENCH = REPO_ROOT / "reports" / "bench.json"


def toy() -> determinism.Numbers:
    return {"metric values": {"loss @ step 2": [4.70781946182251],
                              "loss @ step 4": [4.5280961990356445],
                              "grad_norm @ step 2": [6.123456789],
                              "tune_f1 @ step 9": [4.909269162210339]},
            "answers": {"answer tune q1": ["Denver Broncos"], "answer dev q2": ["1998"]},
            "metrics.json": {"metrics.json train_loss[0].loss": [4.70781946182251],
                             "metrics.json train_loss[1].loss": [4.5280961990356445],
                             "metrics.json steps": [18]}}


def changed(numbers: determinism.Numbers, source: str, name: str, value) -> determinism.Numbers:
    out = copy.deepcopy(numbers)
    out[source][name] = [value]
    return out


# ------------------------------------------------------------------ the verdict
def test_the_same_numbers_are_identical():
    v = determinism.verdict(determinism.compare(toy(), toy()), "a", "b")
    assert v["verdict"] == "identical" and v["numbers"] == 9 and v["differ"] == 0
    assert v["sources"] == {"answers": 2, "metric values": 4, "metrics.json": 3}
    assert v["max_abs_difference"] is None and "largest" not in v


def test_low_bit_differences_are_counted_with_the_largest_and_where():
    b = changed(toy(), "metric values", "loss @ step 4", 4.5280961990356445 + 3e-7)
    b = changed(b, "metric values", "grad_norm @ step 2", 6.123456789 - 5e-7)
    v = determinism.verdict(determinism.compare(toy(), b), "a", "b")
    assert v["verdict"] == "different" and v["differ"] == 2 and v["numbers"] == 9
    assert v["max_abs_difference"] == pytest.approx(5e-7, rel=1e-6)
    assert v["largest"][0]["name"] == "grad_norm @ step 2"
    assert v["where"] == {"grad_norm": 1, "loss": 1}
    assert v["answers_differ"] == 0 and v["rounded_to_decimals"] is None
    assert "2 of 9 numbers, at most 5e-07: grad_norm, loss" in determinism.summary("x", v)


def test_an_answer_and_a_number_only_one_side_has_differ_too():
    b = changed(toy(), "answers", "answer dev q2", "1999")
    b["metrics.json"]["metrics.json resumed_from_step"] = [0]  # only b has it
    del b["metric values"]["tune_f1 @ step 9"]  # only a has it
    v = determinism.verdict(determinism.compare(toy(), b), "a", "b")
    assert v["differ"] == 3 and v["answers_differ"] == 1 and v["numbers"] == 10
    assert v["where"] == {"answer dev": 1, "metrics.json resumed_from_step": 1, "tune_f1": 1}
    assert {(r["name"], r["a"], r["b"]) for r in v["largest"]} == {
        ("answer dev q2", "1998", "1999"), ("metrics.json resumed_from_step", None, 0),
        ("tune_f1 @ step 9", 4.909269162210339, None)}
    assert v["max_abs_difference"] is None and v["rounded_to_decimals"] is None


def test_a_logger_that_rounds_is_named_with_its_decimals():
    # transformers 4.x logs the training loss rounded to 4 decimals; 5.x does not.
    b = toy()
    for source, name in (("metric values", "loss @ step 2"), ("metric values", "loss @ step 4"),
                         ("metrics.json", "metrics.json train_loss[0].loss"),
                         ("metrics.json", "metrics.json train_loss[1].loss")):
        b = changed(b, source, name, round(b[source][name][0], 4))
    v = determinism.verdict(determinism.compare(toy(), b), "a", "b")
    assert v["differ"] == 4 and v["rounded_to_decimals"] == 4
    assert v["where"] == {"loss": 2, "metrics.json train_loss[].loss": 2}


def test_run_numbers_reads_every_step_answer_and_metrics_json_but_no_time(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp).info.run_id
    for step, loss in ((2, 4.5), (4, 4.25)):
        client.log_metric(run, "loss", loss, step=step)
    client.log_metric(run, "train_seconds", 12.5, step=4)  # time: never compared
    client.log_metric(run, "system/cpu_utilization_percentage", 90.0, step=0)
    files = {"predictions_tune.json": {"q1": "Denver"}, "predictions_dev.json": {"q2": "1998"},
             "metrics.json": {"tune": {"f1": 50.0}, "steps": 4, "wall_seconds": 3.2,
                              "curve": [{"step": 4, "tune_f1": 50.0}]}}
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
        client.log_artifact(run, str(tmp_path / name))
    got = determinism.run_numbers(client, run, tmp_path / "down", prefix="slot 1 ")
    assert got == {
        "metric values": {"slot 1 loss @ step 2": [4.5], "slot 1 loss @ step 4": [4.25]},
        "answers": {"slot 1 answer tune q1": ["Denver"], "slot 1 answer dev q2": ["1998"]},
        "metrics.json": {"slot 1 metrics.json tune.f1": [50.0], "slot 1 metrics.json steps": [4],
                         "slot 1 metrics.json curve[0].step": [4],
                         "slot 1 metrics.json curve[0].tune_f1": [50.0]}}


# ------------------------------------------------------------------ the hogs
def test_hogs_are_pinned_one_per_core_and_killed_however_the_block_ends():
    cpus = sorted(os.sched_getaffinity(0))
    with determinism.hogs(bound_s=60) as procs:
        assert [os.sched_getaffinity(p.pid) for p in procs] == [{c} for c in cpus]
        assert all(p.poll() is None for p in procs)
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * len(cpus)
    with pytest.raises(RuntimeError), determinism.hogs(bound_s=60) as procs:
        raise RuntimeError("a training failed beside them")
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * len(cpus)


def test_a_hog_ends_by_itself_after_its_bound():
    with determinism.hogs(bound_s=0.3) as procs:
        assert [p.wait(timeout=30) for p in procs] == [0] * len(procs)  # before the kill


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except FileNotFoundError:
        return True


def test_hogs_end_with_the_process_that_started_them():
    """A bench killed outright (SIGKILL: no finally runs) leaves no hog burning a core."""
    code = ("import sys, time\n"
            "from study.bench.determinism import hogs\n"
            "with hogs(bound_s=120) as procs:\n"
            "    print(' '.join(str(p.pid) for p in procs), flush=True)\n"
            "    time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == len(os.sched_getaffinity(0))
        assert not any(_ended(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 20
    while not all(_ended(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert all(_ended(p) for p in pids), "a hog outlived the process that started it"


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("argv, words", [
    (["--parts", "threads,nope"], "unknown part(s) nope of --determinism"),
    (["--python", "/no/such/python"], "--python /no/such/python: no such file"),
])
def test_bad_options_are_refused_in_one_line_before_anything_trains(argv, words, capsys,
                                                                    tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["bench", "--determinism", *argv, "--params", str(REPO_ROOT / "params.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("study bench: error: ") and words in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing made, nothing written


# ------------------------------------------------------------------ CI's two legs
def _major(env: dict) -> str:
    return env["transformers"].split(".")[0]


def test_the_fixture_training_gives_the_numbers_recorded_for_this_line(tmp_path, monkeypatch):
    """The smoke baseline at one thread, trained here (new processes of this Python), against
    the fixture recorded on transformers 5.x by `study bench --determinism --write-fixture`.
    On the fixture's line every number must be identical; on another line, the comparison
    must be exactly the one reports/bench.json `determinism` recorded for that pair of lines
    (the same count of numbers, the same numbers differing, each rounded as it says), so the
    test passes by no luck: on 4.x every number but the logged training loss is identical, and
    that loss is the fixture's rounded to 4 decimals."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fixture = json.loads(FIXTURE.read_text())
    recorded = fixture["environment"]
    numbers, env = determinism.fixture_training(sys.executable, tmp_path / "ws",
                                                REPO_ROOT / "params.yaml")
    assert env["params_hash"] == recorded["params_hash"], (
        "the fixture training's settings (params.yaml smoke, runtime.threads=1) changed since "
        "the fixture was recorded: record it again with `study bench --determinism --parts "
        "transformers --write-fixture` (and --python for the 4.x line's verdict)")
    got = determinism.verdict(determinism.compare(fixture["numbers"], numbers), "fixture", "now")
    where = {k: (recorded.get(k), env.get(k)) for k in
             ("transformers", "torch", "datasets", "cpu_capability", "torch_threads")}
    context = f"\nenvironment (fixture, now): {where}\ncomparison: {json.dumps(got)[:3000]}"
    if _major(env) == _major(recorded):
        assert got["verdict"] == "identical", context
        return
    pair = json.loads(BENCH.read_text())["determinism"]["variations"]["transformers"]
    lines = {_major(pair["environments"][side]) for side in ("a", "b")}
    assert lines == {_major(env), _major(recorded)}, (
        f"reports/bench.json has no measured pair of transformers {_major(recorded)}.x and "
        f"{_major(env)}.x: run `study bench --determinism --parts transformers --python PATH`")
    keys = ("verdict", "numbers", "differ", "answers_differ", "rounded_to_decimals", "where")
    assert {k: got.get(k) for k in keys} == {k: pair.get(k) for k in keys}, context


# ------------------------------------------------------------------ the bench
@pytest.mark.slow
def test_the_bench_writes_each_variation_and_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "reports").mkdir()
    kept = {"verdict": "identical", "numbers": 1}
    pair = {"verdict": "different", "numbers": 161, "differ": 18, "commit": "abc",
            "load_average": [1.0, 1.0, 1.0], "seconds": 60.0, "fixture": {"stale": True}}
    (tmp_path / "reports" / "bench.json").write_text(json.dumps(
        {"other": {"kept": True},
         "determinism": {"variations": {"dvc": kept, "transformers": pair}}}))
    cfg = load_config(REPO_ROOT / "params.yaml", None, ["runtime.reports=reports"])
    determinism.run(cfg, parts=("threads", "hog", "transformers"),
                    params=str(REPO_ROOT / "params.yaml"), overrides=["student.train.epochs=1"])
    doc = json.loads((tmp_path / "reports" / "bench.json").read_text())
    assert sorted(os.listdir(tmp_path)) == ["reports"]  # every training in a scratch copy
    assert doc["other"] == {"kept": True}
    s = doc["determinism"]
    assert s["profile"] == "smoke" and s["overrides"] == ["student.train.epochs=1"]
    assert s["environment"]["versions"]["transformers"]
    v = s["variations"]
    assert sorted(v) == ["dvc", "hog", "threads", "transformers"] and v["dvc"] == kept
    hog = v["hog"]
    # The same training beside a busy loop on every core: every number identical.
    assert hog["verdict"] == "identical", hog
    assert hog["hogs_alive_at_end"] == len(os.sched_getaffinity(0))
    assert set(hog["sources"]) == {"answers", "metric values", "metrics.json"}
    assert hog["numbers"] > 100 and hog["seconds"] > 0 and len(hog["load_average"]) == 3
    threads = v["threads"]
    assert threads["numbers"] == hog["numbers"] and threads["b"] == "runtime.threads=1"
    assert threads["verdict"] in ("identical", "different")
    if threads["verdict"] == "different":  # low bits: a reduction split over threads
        assert 0 < threads["max_abs_difference"] < 1e-3 and threads["where"]
    # No --python: the pair an earlier run measured is kept, said so, with its commit; this
    # line's fixture training (the profile's own settings, not --set's) is compared afresh.
    t = v["transformers"]
    assert {k: t[k] for k in ("verdict", "numbers", "differ")} == {
        "verdict": "different", "numbers": 161, "differ": 18}
    assert t["kept"]["commit"] == "abc" and t["kept"]["seconds"] == 60.0
    assert t["fixture"]["path"] == "tests/data/determinism_transformers5.json"
    assert t["fixture"]["verdict"] == "identical", t["fixture"]
