"""The registered pyfunc model: `champion` alias, pyfunc.load_model, `mlflow models serve`.

A tiny student is logged and registered by best.log_registered_model (what `study best`
calls) into a fresh SQLite store, rather than running the whole pipeline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import make_tiny_distilbert_qa, study_command

from study.best import log_registered_model
from study.config import load_config
from study.layout import Layout
from study.modeling import save_model
from study.qa import QASettings, QuestionAnswerer
from study.serving import CHAMPION, SEEDS_HEADING, record_seeds, version_card
from study.tracking import Tracker

pytestmark = pytest.mark.slow
NAME = "kd-qa-student-smoke"
URI = f"models:/{NAME}@{CHAMPION}"
CARD_PARAMS = {"temperature": 2.0, "alpha_ce": 0.5, "alpha_squad": 0.25}


@pytest.fixture(scope="module")
def store(tmp_path_factory, params_path, distil_tokenizer):
    """Two versions registered from two students; `champion` must name the second."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_config(params_path, "smoke", [f"tracking.uri={uri}",
                                             f"tracking.artifact_location={root / 'artifacts'}"])
    previous = mlflow.get_tracking_uri()
    tracker = Tracker(cfg)
    versions = []
    for seed in (31, 32):
        model_dir = root / f"student-{seed}"
        save_model(make_tiny_distilbert_qa(len(distil_tokenizer), seed=seed), distil_tokenizer,
                   model_dir)
        with tracker.run(f"best-{seed}", "best") as handle:
            # The second as `study best` registers it: described (the first, as before).
            card = None if seed == 31 else version_card(
                study_name="s", trial=3, params=CARD_PARAMS, dev={"exact_match": 10.0, "f1": 20.5},
                tune_f1=21.25, seed=42, run_id=handle.run_id, trial_run_id="trial-run",
                report="reports/report.md", profile="smoke", git_commit="abc")
            versions.append(log_registered_model(handle, model_dir, cfg, card))
    yield {"uri": uri, "cfg": cfg, "versions": versions, "model_dir": model_dir, "root": root}
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def questions(xquad_records) -> pd.DataFrame:
    recs = xquad_records[:6] + xquad_records[900:904]
    return pd.DataFrame({"question": [r["question"] for r in recs],
                         "context": [r["context"] for r in recs]})


@pytest.fixture(scope="module")
def expected(store, questions) -> list[dict]:
    """The predictor on the exported folder, with the profile's settings."""
    qa = QuestionAnswerer.from_pretrained(str(store["model_dir"]),
                                          QASettings.from_config(store["cfg"]), device="cpu")
    spans = qa.predict(list(questions["question"]), list(questions["context"]))
    return [{"answer": s.text, "score": s.score, "start": s.start, "end": s.end} for s in spans]


def same_answers(rows: list[dict], expected: list[dict]) -> None:
    assert [(r["answer"], r["start"], r["end"]) for r in rows] == \
        [(e["answer"], e["start"], e["end"]) for e in expected]
    assert [r["score"] for r in rows] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_champion_is_the_new_version_and_answers_a_dataframe(store, questions, expected):
    client = mlflow.MlflowClient(store["uri"])
    assert store["versions"] == ["1", "2"]
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"
    model = mlflow.pyfunc.load_model(URI)
    assert model.metadata.get_input_schema().input_names() == ["question", "context"]
    assert model.metadata.get_output_schema().input_names() == ["answer", "score", "start", "end"]
    out = model.predict(questions)
    assert list(out.columns) == ["answer", "score", "start", "end"]
    same_answers(out.to_dict("records"), expected)
    local = Path(mlflow.artifacts.download_artifacts(URI))
    reqs = (local / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in reqs} >= {"torch", "transformers", "tokenizers", "mlflow"}
    assert (local / "input_example.json").exists()


def test_the_registry_says_what_the_champion_is_and_seeds_add_its_interval(store):
    client = mlflow.MlflowClient(store["uri"])
    model = client.get_registered_model(NAME)
    assert CHAMPION in model.description and "pyfunc.load_model" in model.description
    assert model.tags == {"project": "kd-qa-study", "profile": "smoke",
                          "mlflow_experiment": "kd-qa-smoke",
                          "report": str(Layout.of(store["cfg"]).reports.report)}
    version = client.get_model_version_by_alias(NAME, CHAMPION)
    text = version.description
    assert "Trial 3 of study `s`, the best by tune F1 (21.25)" in text
    assert "temperature = 2, alpha_ce = 0.5, alpha_squad = 0.25" in text
    assert "10.00 / 20.50" in text and "reports/report.md" in text
    assert f"{SEEDS_HEADING}: not yet measured" in text
    tags = version.tags
    assert (tags["study_name"], tags["trial"], tags["dev_f1"], tags["alpha_squad"]) == \
        ("s", "3", "20.50", "0.25")
    assert tags["mlflow_run_id"] == version.run_id and tags["trial_run_id"] == "trial-run"

    arm = {"seeds": [1, 2, 3], "mean": {"f1": 19.0, "exact_match": 9.0},
           "ci95": {"f1": [15.5, 22.5], "exact_match": [6.0, 12.0]}}
    assert record_seeds(client, NAME, "s", 4, arm) is None  # another trial: nothing claimed
    assert client.get_model_version(NAME, version.version).description == text
    assert record_seeds(client, NAME, "s", 3, arm) == str(version.version)
    after = client.get_model_version(NAME, version.version)
    assert after.description.startswith(text.split(SEEDS_HEADING)[0])
    assert "not yet measured" not in after.description
    assert "dev F1 19.00, 95% CI [15.50, 22.50] over seeds and questions" in after.description
    assert after.tags["dev_f1_seeds_ci95"] == "[15.50, 22.50]" and after.tags["seeds"] == "1,2,3"
    assert record_seeds(client, NAME, "s", 3, arm) == str(version.version)  # once more
    assert client.get_model_version(NAME, version.version).description.count(SEEDS_HEADING) == 1


def test_the_model_is_logged_into_its_run_which_the_tracker_ends(store):
    client = mlflow.MlflowClient(store["uri"])
    version = client.get_model_version_by_alias(NAME, CHAMPION)
    run = client.get_run(version.run_id)
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert model.source_run_id == run.info.run_id
    assert model.experiment_id == run.info.experiment_id != "0"  # not MLflow's Default
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert run.info.status == "FINISHED"


def test_pyfunc_loads_where_study_is_not_installed(store, questions, expected, tmp_path):
    """A Python that cannot import the project's `study`: only the model's own code copy."""
    local = Path(mlflow.artifacts.download_artifacts(URI, dst_path=str(tmp_path / "m")))
    script = textwrap.dedent(f"""
        import json, sys
        from importlib.machinery import PathFinder
        code = {str(local / "code")!r}

        class OnlyTheModelsCode:
            # Refuse any `study` but the copy logged with the model (code_paths).
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] != "study":
                    return None
                spec = PathFinder.find_spec(name, path)
                if spec is None or not str(spec.origin).startswith(code):
                    raise ModuleNotFoundError(name)
                return spec

        sys.meta_path.insert(0, OnlyTheModelsCode())
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model({str(local)!r})
        out = model.predict(pd.DataFrame(json.loads(sys.stdin.read())))
        assert sys.modules["study.qa"].__file__.startswith(code)
        print(out.to_json(orient="records"))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], check=False,
                          input=questions.to_json(orient="records"), cwd=tmp_path,
                          env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_answers(json.loads(proc.stdout.strip().splitlines()[-1]), expected)


# Records the model cannot answer, and what its refusal must name.
BAD_RECORDS = [
    ({"question": "Who?", "context": ""}, "empty context"),
    ({"question": "Who?", "context": "   "}, "empty context"),
    ({"question": "", "context": "Paris is in France."}, "empty question"),
    ({"question": "Who?", "context": None}, "context"),
    ({"question": "Who?", "context": 42}, "context"),
    ({"question": 7, "context": "Paris is in France."}, "question"),
]
BAD_IDS = ["empty-context", "blank-context", "empty-question", "null-context",
           "number-context", "number-question"]


@pytest.fixture(scope="module")
def champion(store):
    return mlflow.pyfunc.load_model(URI)


@pytest.mark.parametrize("record, needle", BAD_RECORDS, ids=BAD_IDS)
def test_pyfunc_refuses_a_record_it_cannot_answer(champion, record, needle):
    """A 400 with the reason (MLflow's status for the error code), not an answer to "None"."""
    from mlflow.exceptions import MlflowException

    good = {"question": "Where is Paris?", "context": "Paris is in France."}
    with pytest.raises(MlflowException) as info:
        champion.predict(pd.DataFrame([good, record]))
    assert info.value.get_http_status_code() == 400
    assert needle in info.value.message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it and the uvicorn it started), then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def test_mlflow_models_serve_answers_invocations(store, questions, expected, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server not up in 180 s"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        body = json.dumps({"dataframe_records": questions.to_dict("records")}).encode()
        req = urllib.request.Request(f"{base}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        same_answers(answer["predictions"], expected)
        for record, needle in BAD_RECORDS:
            status, reply = _post(f"{base}/invocations", {"dataframe_records": [record]})
            assert status == 400, (record, reply)
            assert needle in json.loads(reply)["message"], reply  # strict JSON: no NaN
    finally:
        stop(server)
        log.close()


def _post(url: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_study_predict_resolves_a_models_uri(store, questions, expected, tmp_path):
    q, c = questions.iloc[0]["question"], questions.iloc[0]["context"]
    cmd, env = study_command("predict", "--model", URI, "--question", q, "--context", c,
                             "--set", f"tracking.uri={store['uri']}")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "type hint" not in said.lower(), said[-3000:]  # MLflow's warning on a bare predict
    assert "\x1b[" not in said, said[-3000:]  # nor its colour codes
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (got["answer"], got["start"], got["end"]) == \
        (expected[0]["answer"], expected[0]["start"], expected[0]["end"])


def test_a_request_past_the_servers_limit_is_a_json_504_not_a_late_answer(champion, questions,
                                                                          expected, monkeypatch):
    """Under `mlflow models serve` (which sets MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT), the
    model stops at a deadline before the server's limit: here a 1 s limit leaves no time."""
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "1")
    with pytest.raises(MlflowException) as info:
        champion.predict(questions)
    assert info.value.get_http_status_code() == 504
    body = json.loads(info.value.serialize_as_json())
    assert body["error_code"] == "DEADLINE_EXCEEDED"
    assert f"request: {len(questions)} rows" in body["message"]
    assert "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT" in body["message"]
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "600")  # time enough
    same_answers(champion.predict(questions).to_dict("records"), expected)
