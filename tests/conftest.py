"""Shared fixtures: the real offline tokenizer and data, and tiny random QA models.

Models are tiny (hidden 32, 2 layers, 2 heads) so that every unit test runs in well
under a second on two CPU cores; tests/test_cli.py and tests/test_search.py run the
real CLI on the smoke profile, through `study_command`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
)

from study.data import EMBEDDED_DATA, load_squad_file
from study.modeling import load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]

def study_command(*args: str, profile: str | None = "smoke", env: dict | None = None,
                  params: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run the real `study` CLI as a subprocess, offline, on the
    repository's params.yaml (read only: a command that records what it adds there,
    `seeds --add`, `search --n-trials` on the pipeline's study, is given a copy, `params`)."""
    cmd = [sys.executable, "-m", "study", *args, "--params",
           str(params or REPO_ROOT / "params.yaml")]
    if profile is not None:
        cmd += ["--profile", profile]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                **(env or {})}
    return cmd, full_env


TINY = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 37, "positions": 256}


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # A timed training job shares the two cores; one thread keeps tests predictable.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_reaches_children():
    """Tests send SIGINT (a Ctrl-C) to the processes they start. A shell's background job
    (`pytest ... &`) starts with SIGINT ignored, and an ignored signal stays ignored across
    exec: Python would then never raise KeyboardInterrupt in those processes. A handled
    signal is reset to the default on exec, so handling it here gives every child its own."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session", autouse=True)
def _repo_params_untouched():
    """No test writes the repository's params.yaml (`seeds --add` and `search --n-trials`
    record what they add in the params file they are given: tests give them a copy)."""
    before = (REPO_ROOT / "params.yaml").read_bytes()
    yield
    assert (REPO_ROOT / "params.yaml").read_bytes() == before, \
        "a test wrote the repository's params.yaml"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def params_path(repo_root) -> Path:
    path = repo_root / "params.yaml"
    assert path.exists()
    return path


@pytest.fixture(scope="session")
def tokenizer():
    """The real BERT uncased WordPiece tokenizer of the embedded MiniLM (offline)."""
    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def distil_tokenizer():
    """Same vocabulary, DistilBERT tokenizer class (as the student uses)."""
    return load_tokenizer("embedded", "distilbert")


def tiny_bert_config(vocab_size: int, num_layers: int = TINY["layers"]) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=TINY["hidden"],
                      num_hidden_layers=num_layers, num_attention_heads=TINY["heads"],
                      intermediate_size=TINY["intermediate"],
                      max_position_embeddings=TINY["positions"])


def tiny_distilbert_config(vocab_size: int) -> DistilBertConfig:
    return DistilBertConfig(vocab_size=vocab_size, dim=TINY["hidden"], n_layers=TINY["layers"],
                            n_heads=TINY["heads"], hidden_dim=TINY["intermediate"],
                            max_position_embeddings=TINY["positions"])


def make_tiny_bert_qa(vocab_size: int, seed: int = 0, num_layers: int = TINY["layers"]):
    torch.manual_seed(seed)
    return BertForQuestionAnswering(tiny_bert_config(vocab_size, num_layers))


def make_tiny_distilbert_qa(vocab_size: int, seed: int = 1):
    torch.manual_seed(seed)
    return DistilBertForQuestionAnswering(tiny_distilbert_config(vocab_size))


@pytest.fixture
def tiny_bert_qa(tokenizer):
    return make_tiny_bert_qa(len(tokenizer))


@pytest.fixture
def tiny_distilbert_qa(tokenizer):
    return make_tiny_distilbert_qa(len(tokenizer))


@pytest.fixture(scope="session")
def xquad_records() -> list[dict]:
    return load_squad_file(EMBEDDED_DATA)


@pytest.fixture(scope="session")
def offline_hub(tmp_path_factory, xquad_records) -> Path:
    """HF_HOME of a hand-built Hugging Face cache holding `bert-base-uncased`,
    `distilbert-base-uncased` (tiny, random, the real vocab) and `squad` (tests/hub_cache.py):
    the paper profile's hub names, loadable with HF_HUB_OFFLINE=1."""
    from hub_cache import build

    return build(tmp_path_factory.mktemp("hf_home"), xquad_records)
