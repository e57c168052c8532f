"""`study predict`, the real CLI in a subprocess, against the evaluation path in-process."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import make_tiny_distilbert_qa, study_command
from test_qa import evaluation_predictions

from study.cli import main
from study.config import load_config
from study.data import to_squad_json
from study.metric import squad_metrics
from study.modeling import save_model
from study.qa import QASettings


def predict(cwd, *args: str) -> subprocess.CompletedProcess:
    # One thread, as the in-process side runs: identical float sums, identical answers.
    cmd, env = study_command("predict", *args, "--set", "runtime.threads=1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, distil_tokenizer):
    out = tmp_path_factory.mktemp("student") / "model"
    save_model(make_tiny_distilbert_qa(len(distil_tokenizer), seed=21), distil_tokenizer, out)
    return out


@pytest.fixture(scope="module")
def records(xquad_records):
    return xquad_records[:20] + xquad_records[700:712]


@pytest.mark.slow
def test_predict_on_squad_file_matches_evaluation(tmp_path, student_dir, records, params_path,
                                                  distil_tokenizer):
    data = tmp_path / "dev.json"
    data.write_text(json.dumps(to_squad_json(records)))
    proc = predict(tmp_path, "--model", str(student_dir), "--data", str(data),
                   "--out", "out/preds.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out" / "preds.json").read_text())
    metrics = json.loads((tmp_path / "out" / "preds.metrics.json").read_text())

    settings = QASettings.from_config(load_config(params_path, "smoke", []))
    from study.modeling import load_qa_model
    want = evaluation_predictions(tmp_path / "trainer", load_qa_model(str(student_dir)).eval(),
                                  distil_tokenizer, records, settings)
    assert got == want
    refs = {r["id"]: r["answers"]["text"] for r in records}
    scores = squad_metrics(want, refs)
    assert metrics == {"exact_match": pytest.approx(scores["exact_match"]),
                       "f1": pytest.approx(scores["f1"]), "questions": len(records)}
    assert f"F1 {scores['f1']:.2f}" in proc.stdout


@pytest.mark.slow
def test_predict_jsonl_without_answers_and_one_question(tmp_path, student_dir, records):
    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(json.dumps({"id": r["id"], "question": r["question"],
                                          "context": r["context"]}) for r in records[:5]))
    proc = predict(tmp_path, "--model", str(student_dir), "--data", str(data))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "predictions.json").read_text())
    assert list(got) == [r["id"] for r in records[:5]]
    assert not (tmp_path / "predictions.metrics.json").exists() and "F1" not in proc.stdout

    r = records[0]
    proc = predict(tmp_path, "--model", str(student_dir), "--question", r["question"],
                   "--context", r["context"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["answer"] == got[r["id"]] == r["context"][answer["start"]:answer["end"]]


@pytest.mark.parametrize("case, needle", [
    ("missing", "data file not found"),
    ("not-json", "line 1: malformed JSON"),
    ("no-context", "line 2: needs 'id', 'question' and 'context'"),
    ("misplaced", "answer text not found at its answer_start"),
    ("no-data", "give --data FILE, or both --question and --context"),
    ("no-model", "model path does not exist"),
    ("empty-question", "empty question for questions b"),
    ("empty-answer", "empty answer text for questions b"),
    ("blank-context-squad", "empty context for questions s1"),
    ("blank-context-flag", "--question/--context: empty context"),
])
def test_bad_input_is_one_line_error(tmp_path, student_dir, params_path, capsys, case, needle):
    good = json.dumps({"id": "a", "question": "q?", "context": "c."})
    files = {"not-json": "{oops\n",
             "no-context": good + "\n" + json.dumps({"id": "b", "question": "q"}),
             "misplaced": json.dumps({"id": "a", "question": "q?", "context": "Paris.",
                                      "answers": [{"text": "Paris", "answer_start": 3}]}),
             "no-model": good,
             "empty-question": good + "\n" + json.dumps({"id": "b", "question": " ",
                                                         "context": "c."}),
             "empty-answer": good + "\n" + json.dumps({"id": "b", "question": "q?",
                                                         "context": "c.", "answers": [""]}),
             "blank-context-squad": json.dumps({"data": [{"title": "t", "paragraphs": [
                 {"context": "\n ", "qas": [{"id": "s1", "question": "q?"}]}]}]})}
    data = tmp_path / "in.jsonl"
    if case in files:
        data.write_text(files[case])
    model = str(tmp_path / "nowhere") if case == "no-model" else str(student_dir)
    args = ["--model", model] + ([] if case == "no-data" else ["--data", str(data)])
    if case == "blank-context-flag":
        args = ["--model", model, "--question", "Who?", "--context", " "]
    out = tmp_path / "preds.json"
    # main() is the CLI's entry point; in-process, these fail before any model runs.
    code = main(["predict", *args, "--out", str(out), "--params", str(params_path),
                 "--profile", "smoke"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("study predict: error:") and needle in lines[0], lines[0]
    assert not out.exists()
