"""A Hugging Face cache made by hand, as online loads of the paper profile's names leave it,
so that the hub code path runs offline (HF_HOME=<folder>, HF_HUB_OFFLINE=1):

- `bert-base-uncased` and `distilbert-base-uncased`: tiny random masked-LM checkpoints (the
  hub's are masked-LM checkpoints too: no QA head) with the real uncased WordPiece vocab of
  the embedded MiniLM, and the tokenizer files the hub repos hold (vocab.txt,
  tokenizer.json, a tokenizer_config.json that names no class), in the hub cache layout:
  `hub/models--<name>/snapshots/<revision>/...` with `refs/main`;
- `squad`: train and validation splits of real SQuAD v1.1 questions (the embedded XQuAD-en
  articles) with the hub data set's features, as Parquet files in the data set repo's layout
  (`hub/datasets--squad/snapshots/<revision>/plain_text/<split>-00000-of-00001.parquet`,
  README.md declaring the `plain_text` config), then prepared into the datasets cache
  (`datasets/squad/plain_text/0.0.0/<hash>/`) by datasets' own Parquet builder, through
  `load_dataset_builder` on that repo, as an online `load_dataset("squad")` prepares the
  files it downloaded. Offline, `load_dataset("squad")` finds that prepared copy.
Works with datasets 5.x and the 4.x line the transformers-4 CI leg resolves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REVISION = "0123456789abcdef0123456789abcdef01234567"
MODELS = {"bert-base-uncased": "bert", "distilbert-base-uncased": "distilbert"}
# What the hub repos' tokenizer_config.json say: no tokenizer class.
TOKENIZER_CONFIG = {"do_lower_case": True, "model_max_length": 512}
SQUAD_CARD = """---
configs:
- config_name: plain_text
  data_files:
  - split: train
    path: plain_text/train-*
  - split: validation
    path: plain_text/validation-*
  default: true
---
"""


def _snapshot(hub: Path, kind: str, name: str) -> Path:
    repo = hub / f"{kind}--{name}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def tiny_masked_lm(model_type: str, vocab_size: int):
    import torch
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    if model_type == "bert":
        return BertForMaskedLM(BertConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=512))
    return DistilBertForMaskedLM(DistilBertConfig(
        vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=37,
        max_position_embeddings=512))


def write_model_repo(folder: Path, model_type: str) -> None:
    """A hub-style model folder: tiny random weights, the embedded vocab, the hub's files."""
    from study.modeling import load_tokenizer, resolve

    tokenizer = load_tokenizer("embedded")
    tiny_masked_lm(model_type, len(tokenizer)).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    for extra in ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja"):
        (folder / extra).unlink(missing_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    shutil.copyfile(Path(resolve("embedded")) / "vocab.txt", folder / "vocab.txt")


def write_squad(hub: Path, datasets_cache: Path, records: list[dict]) -> None:
    from datasets import Dataset, Features, Sequence, Value, load_dataset_builder

    features = Features({
        "id": Value("string"), "title": Value("string"), "context": Value("string"),
        "question": Value("string"),
        "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")})})
    titles = sorted({r["title"] for r in records})
    dev_titles = set(titles[: len(titles) // 4])  # whole articles, as the official split
    repo = _snapshot(hub, "datasets", "squad")
    (repo / "plain_text").mkdir(exist_ok=True)
    for split, rows in (("train", [r for r in records if r["title"] not in dev_titles]),
                        ("validation", [r for r in records if r["title"] in dev_titles])):
        Dataset.from_list(rows, features=features).to_parquet(
            str(repo / "plain_text" / f"{split}-00000-of-00001.parquet"))
    (repo / "README.md").write_text(SQUAD_CARD)
    # The builder names the data set after its folder: `squad`, as the hub repo's name.
    named = hub.parent / "repos" / "squad"
    named.parent.mkdir(parents=True, exist_ok=True)
    named.symlink_to(repo, target_is_directory=True)
    load_dataset_builder(str(named), cache_dir=str(datasets_cache)).download_and_prepare()


def build(home: Path, records: list[dict]) -> Path:
    """The cache under `home` (use it as HF_HOME); returns `home`."""
    hub = home / "hub"
    for name, model_type in MODELS.items():
        write_model_repo(_snapshot(hub, "models", name), model_type)
    write_squad(hub, home / "datasets", records)
    return home
