"""The paper profile's hub code path, rehearsed offline: `load_dataset("squad")`,
`bert-base-uncased` and `distilbert-base-uncased` come from a hand-built Hugging Face cache
(the `offline_hub` fixture, tests/hub_cache.py) with HF_HUB_OFFLINE=1, as they would for a
user whose cache holds them. The slow test runs the whole `study run --profile paper` with
tiny sizes; the others check the cache loads, and what a partly cached hub says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, study_command

from study.cli import RUN_CHAIN

# The paper profile at toy size: the shapes stay (384-token windows, stride 128), the
# counts shrink.
TINY = ("data.max_questions=40", "teacher.train.epochs=1", "teacher.train.batch_size=8",
        "student.train.epochs=1", "student.train.batch_size=8", "search.n_trials=2",
        "seeds.values=[1,2,3]")

LOADS = """
import json
from study.config import StudentConfig
from study.data import load_hub_squad
from study.modeling import build_student, load_qa_model
squad = load_hub_squad("squad")
teacher = load_qa_model("bert-base-uncased")
student, tokenizer = build_student(StudentConfig(init="distilbert-base-uncased", layers=None), 1)
print(json.dumps({"train": len(squad["train"]), "dev": len(squad["dev"]),
                  "teacher": type(teacher).__name__, "student": type(student).__name__,
                  "tokenizer": type(tokenizer).__name__,
                  "inputs": sorted(tokenizer("Where?", "Paris."))}))
"""


def offline(hf_home: Path) -> dict[str, str]:
    return {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}


def test_the_hand_built_cache_loads_offline_and_the_student_keeps_its_tokenizer(
        offline_hub, tmp_path):
    _, env = study_command(env=offline(offline_hub))
    proc = subprocess.run([sys.executable, "-c", LOADS], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["train"] > 0 and got["dev"] > 0
    assert got["teacher"] == "BertForQuestionAnswering"
    assert got["student"] == "DistilBertForQuestionAnswering"
    # DistilBERT's tokenizer (transformers 5 spells its fast class DistilBertTokenizer): the
    # inputs DistilBERT takes, no token_type_ids.
    assert got["tokenizer"].startswith("DistilBertTokenizer")
    assert got["inputs"] == ["attention_mask", "input_ids"]


def test_a_hub_not_in_the_cache_says_why(tmp_path):
    cmd, env = study_command("prepare", profile="paper", env=offline(tmp_path / "empty_hf"))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    # The reason, not only the exception's type.
    assert "OfflineModeIsEnabled" in lines[0] and "not cached" in lines[0], lines[0]


@pytest.mark.slow
def test_study_run_on_the_paper_profile_offline(offline_hub, tmp_path):
    sets = [a for kv in TINY for a in ("--set", kv)]
    cmd, env = study_command("run", *sets, profile="paper", env=offline(offline_hub))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    ran = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("== study ")]
    assert ran == list(RUN_CHAIN)
    print(next(line for line in proc.stdout.splitlines() if "stage wall times" in line))

    report = (tmp_path / "reports" / "paper" / "report.md").read_text()
    assert "(profile `paper`)" in report
    assert "the hub data set 'squad' (dev = official validation)" in report
    assert "bert-base-uncased (bert, 2 layers)" in report
    assert "distilbert-base-uncased (distilbert, 2 layers)" in report
    assert "small-scale reproduction" not in report  # the embedded default's caveat

    from transformers import AutoTokenizer

    art = tmp_path / "artifacts" / "paper"
    for folder in (art / "best" / "model", art / "baseline" / "model"):
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"].startswith("DistilBertTokenizer"), folder
        tokenizer = AutoTokenizer.from_pretrained(folder)  # what a user's serving loads
        assert "token_type_ids" not in tokenizer("Where?", "Paris."), folder
    assert not [p.name for p in art.iterdir() if p.name.startswith(".")]
