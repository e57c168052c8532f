"""`study bench --cpu` (study/bench/cpu.py): its arithmetic on toy inputs, and the whole bench
on the smoke profile in a folder with no prepared data and no teacher (it prepares a scratch
copy and says the teacher is a stand-in)."""

from __future__ import annotations

import time

import pytest

from study.bench import cpu
from study.config import load_config
from study.files import read_json


def test_step_flops_is_six_per_non_embedding_parameter_and_token_plus_attention():
    shape = {"non_embedding_parameters": 1000, "layers": 2, "hidden": 4}
    assert cpu.step_flops(shape, batch=3, length=5) == 6 * 1000 * 15 + 12 * 2 * 4 * 5 * 15


def test_parts_count_each_call_without_the_parts_called_inside_it():
    class Work:
        def outer(self):
            time.sleep(0.05)
            self.inner()

        def inner(self):
            time.sleep(0.1)

    with cpu.Parts() as parts:
        parts.time(Work, "outer", "outer")
        parts.time(Work, "inner", "inner")
        Work().outer()
    assert Work.outer.__name__ == "outer" and not hasattr(Work.outer, "__wrapped__")  # restored
    assert 0.04 < parts.seconds["outer"] < 0.09  # its own 0.05 s, not the inner 0.1 s
    assert parts.seconds["inner"] >= 0.1
    assert parts.calls == {"outer": 1, "inner": 1}


@pytest.mark.slow
def test_cpu_bench_writes_every_part_on_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no artifacts/ here: no prepared data, no trained teacher
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "bench.json").write_text('{"other": {"kept": true}}')
    cfg = load_config(None, "smoke", ["runtime.reports=reports"])
    cpu.run(cfg, steps=2, repeats=2, parts=("step", "processes", "trial"))
    doc = read_json(tmp_path / "reports" / "bench.json", "benchmark file", "")
    assert doc["other"] == {"kept": True}
    s = doc["cpu"]
    assert s["teacher"].startswith("stand-in")
    assert not (tmp_path / "artifacts").exists()  # everything ran in a scratch copy
    step = s["step"]
    assert step["steps_timed"] == 2 == len(step["lengths"])
    for t in ("1", "2"):
        row = step["threads"][t]
        assert row["project_step_ms"] > 0 and row["bare_step_ms"] > 0
        assert 0 < row["bare_share_of_gemm_peak"]
        assert len(row["project_step_ms_runs"]) == 2
    # A training repeated with the same thread count gives the same losses and weights.
    assert s["threads"]["same_threads_run_to_run_identical"] == {"1": True, "2": True}
    assert len(s["threads"]["losses_1_threads"]) == 3  # the untimed first step, then 2
    assert s["processes"]["two_over_one"] > 0
    trial = s["trial"]
    spec = cfg.student.train
    assert trial["state"] == "COMPLETE"
    assert trial["tune_evaluations"] == spec.epochs * spec.evals_per_epoch
    assert trial["steps"] == 18  # the smoke recipe: 2 epochs of 9 batches
    assert trial["seconds"]["training_steps"] > 0 and trial["seconds"]["tracking"] > 0
    # The parts and the remainder add up to the trial's wall time.
    assert sum(trial["seconds"].values()) == pytest.approx(trial["wall_seconds"], abs=0.1)
    assert len(s["environment"]["load_average"]) == 3
