"""Bad input refused at the door: one `study <cmd>: error:` line naming the problem, exit 2,
and nothing written or rewritten. In-process through main() (the CLI's parser, dispatch and
error path); every case fails before any model is loaded or trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from study.cli import RUN_CHAIN, main


def refused(capsys, *args: str) -> str:
    try:
        code = main([*args, "--params", str(REPO_ROOT / "params.yaml"), "--profile", "smoke"])
    except SystemExit as exc:  # refused by the command line's parser, as argparse does
        code = exc.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"study {args[0]}: error:"), lines[0]
    return lines[0]


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("args, needle", [
    (["--n-trials", "0"], "argument --n-trials: must be >= 1, got 0"),
    (["--n-trials", "-1"], "argument --n-trials: must be >= 1, got -1"),
    (["--timeout", "0"], "argument --timeout: must be > 0, got 0"),
    (["--timeout", "-5"], "argument --timeout: must be > 0, got -5"),
    (["--set", "search.n_trials=0"], "search.n_trials must be greater than or equal to 1 (got 0)"),
])
def test_search_refuses_a_non_positive_session_before_writing(tmp_path, monkeypatch, capsys,
                                                              args, needle):
    """0 is not "the default" and -1 is not "nothing to do": trials.csv stays as it was."""
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "trials.csv").write_text("number,state\n0,COMPLETE\n")
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, "search", *args, "--set", f"runtime.reports={reports}")
    assert needle in line
    assert files_under(tmp_path) == {"reports/trials.csv": b"number,state\n0,COMPLETE\n"}


def test_report_names_an_unwritable_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, "report", "--set", "runtime.reports=/proc/forbidden")
    assert "/proc/forbidden is not writable" in line
    assert "metrics.json" not in line


@pytest.mark.parametrize("answer, question, needle", [
    ("", "Where is it?", "empty answer text for questions q-bad"),
    ("Paris", "  ", "empty question for questions q-bad"),
])
def test_prepare_refuses_blank_answers_and_questions(tmp_path, monkeypatch, capsys,
                                                     answer, question, needle):
    context = "Paris is the capital of France."
    good = {"id": "q-good", "question": "What is the capital?",
            "answers": [{"text": "Paris", "answer_start": 0}]}
    bad = {"id": "q-bad", "question": question, "answers": [{"text": answer, "answer_start": 0}]}
    data = tmp_path / "local.json"
    data.write_text(json.dumps({"version": "1.1", "data": [
        {"title": "T", "paragraphs": [{"context": context, "qas": [good, bad]}]}]}))
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, "prepare", "--set", "data.source=local", "--set", f"data.path={data}")
    assert needle in line and "q-good" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.json"]


@pytest.mark.parametrize("args, needle", [
    (["--parts", "gemm,nope"], "no --cpu part nope"),
    (["--steps", "1"], "--steps must be at least 2 for --cpu (got 1)"),
])
def test_bench_cpu_refuses_unknown_parts_and_too_few_steps(capsys, tmp_path, monkeypatch,
                                                           args, needle):
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, "bench", "--cpu", *args)
    assert needle in line
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a scratch prepare


def test_bench_takes_one_measurement_a_call(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--pruning", "--gpu", "--profile", "smoke"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2
    assert lines == ["study bench: error: argument --gpu: not allowed with argument --pruning"]


def test_an_unknown_argument_is_refused_by_its_command(capsys):
    line = refused(capsys, "search", "--bogus", "1")
    assert line == "study search: error: unrecognized arguments: --bogus 1"


@pytest.mark.parametrize("args", [
    ["search", "--n-trials", "0"], ["seeds", "--add", "0"], ["bench", "--steps", "-3"],
    ["distill", "--temperature", "0"], ["distill", "--alpha-ce", "1.5"], ["ui", "--port", "70000"],
    ["search", "--timeout", "abc"],
], ids=lambda a: " ".join(a))
def test_bad_numbers_are_refused_before_the_heavy_imports(args):
    """Refused by the command line's parser, in a fresh interpreter that never imports torch,
    transformers or MLflow (those take 15-24 s on a busy machine; the refusal, under one)."""
    code = ("import sys\nfrom study.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as exc:\n    code = exc.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'mlflow', 'optuna') if m in sys.modules]\n"
            "print(code, heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120,
                          check=False)
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"study {args[0]}: error: argument "), lines


def test_run_help_names_every_stage_it_runs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for stage in (*RUN_CHAIN, "distill"):
        assert stage in text, stage
    assert "dvc repro" in text


def test_bench_flags_dispatch_to_the_module_each_declares():
    """study.bench.MEASUREMENTS is the one table: every flag the parser takes runs its module's
    `run`, with the options it names; no flag runs the default measurement (the cache)."""
    import importlib
    import inspect

    from study.bench import MEASUREMENTS, chosen
    from study.cli import build_parser

    parser = build_parser()
    for m in MEASUREMENTS:
        argv = ["bench"] + ([] if m.flag is None else [m.flag] + (["3"] if m.number else []))
        args = parser.parse_args(argv)
        assert chosen(args) is m
        run = importlib.import_module(f"study.bench.{m.module}").run
        assert set(m.kwargs(args)) <= set(inspect.signature(run).parameters) - {"cfg"}
    assert chosen(parser.parse_args(["bench"])).module == "cache"
