"""Data: loading and validation, the by-article split, and tokenised windows (real XQuAD)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from transformers import BertTokenizer

from study.config import DataConfig
from study.data import (
    EMBEDDED_DATA,
    _tokenize,
    build_eval_features,
    build_splits,
    build_train_features,
    check_same_tokenization,
    load_squad_file,
    manifest,
    records_from_squad,
    split_by_article,
    split_hash,
)
from study.errors import StudyError

FRACTIONS = {"tune": 0.15, "dev": 0.25}


@pytest.fixture(scope="module")
def splits(xquad_records):
    return split_by_article(xquad_records, FRACTIONS, seed=13)


# --------------------------------------------------------------------------- loading
def test_embedded_file_loads(xquad_records):
    assert len(xquad_records) == 1190
    r = xquad_records[0]
    assert set(r) == {"id", "title", "context", "question", "answers"}
    for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"]):
        assert r["context"][s:s + len(t)] == t
    assert len({r["id"] for r in xquad_records}) == len(xquad_records)


def squad_doc(qas, context="Paris is the capital of France.", title="T"):
    return {"version": "1.1", "data": [{"title": title, "paragraphs": [
        {"context": context, "qas": qas}]}]}


GOOD_QA = {"id": "good-1", "question": "What is the capital?",
           "answers": [{"text": "Paris", "answer_start": 0}]}


def test_malformed_json_refused(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [ {"title": "x", ')
    with pytest.raises(StudyError, match="malformed JSON"):
        load_squad_file(path)


def test_missing_file_refused(tmp_path):
    with pytest.raises(StudyError, match="not found"):
        load_squad_file(tmp_path / "nope.json")


def test_not_squad_layout_refused():
    with pytest.raises(StudyError, match="SQuAD"):
        records_from_squad({"rows": []}, "x.json")


@pytest.mark.parametrize("bad", [
    {"id": "q-no-question", "answers": [{"text": "Paris", "answer_start": 0}]},
    {"id": "q-no-answers", "question": "Where?"},
    {"id": "q-empty-answers", "question": "Where?", "answers": []},
    {"id": "q-no-start", "question": "Where?", "answers": [{"text": "Paris"}]},
    {"id": "q-str-start", "question": "Where?", "answers": [{"text": "Paris", "answer_start": "0"}]},
])
def test_missing_fields_refused_naming_the_question(bad):
    with pytest.raises(StudyError) as info:
        records_from_squad(squad_doc([GOOD_QA, bad]), "local.json")
    assert bad["id"] in str(info.value)
    assert "good-1" not in str(info.value)


def test_answer_not_at_answer_start_refused_naming_the_question(tmp_path):
    bad = {"id": "q-shifted", "question": "Which country?",
           "answers": [{"text": "France", "answer_start": 3}]}
    path = tmp_path / "shifted.json"
    path.write_text(json.dumps(squad_doc([GOOD_QA, bad])))
    with pytest.raises(StudyError, match="q-shifted"):
        load_squad_file(path)


@pytest.mark.parametrize("bad, needle", [
    ({"id": "q-empty-text", "question": "Where?", "answers": [{"text": "", "answer_start": 0}]},
     "empty answer text"),
    ({"id": "q-blank-text", "question": "Where?",
      "answers": [{"text": "Paris", "answer_start": 0}, {"text": " ", "answer_start": 5}]},
     "empty answer text"),
    ({"id": "q-empty-question", "question": "",
      "answers": [{"text": "Paris", "answer_start": 0}]}, "empty question"),
    ({"id": "q-negative-start", "question": "Where?",
      "answers": [{"text": "Paris", "answer_start": -1}]}, "missing or malformed"),
])
def test_blank_questions_and_answers_refused_naming_the_question(tmp_path, bad, needle):
    path = tmp_path / "blank.json"
    path.write_text(json.dumps(squad_doc([GOOD_QA, bad])))
    with pytest.raises(StudyError) as info:
        load_squad_file(path)
    assert needle in str(info.value) and bad["id"] in str(info.value)
    assert "good-1" not in str(info.value)


def test_duplicate_ids_refused():
    with pytest.raises(StudyError, match="good-1"):
        records_from_squad(squad_doc([GOOD_QA, dict(GOOD_QA)]), "dup.json")


def test_valid_local_file_round_trips(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(squad_doc([GOOD_QA])))
    (rec,) = load_squad_file(path)
    assert rec["id"] == "good-1" and rec["answers"]["text"] == ["Paris"]


def test_build_splits_refuses_empty_splits(tmp_path, xquad_records):
    # One article cannot be dealt into three splits by article.
    title = xquad_records[0]["title"]
    one = [r for r in xquad_records if r["title"] == title]
    from study.data import to_squad_json
    path = tmp_path / "one_article.json"
    path.write_text(json.dumps(to_squad_json(one)))
    with pytest.raises(StudyError, match="empty split"):
        build_splits(DataConfig(source="local", path=str(path)))


def test_build_splits_embedded_with_cap():
    splits, source = build_splits(DataConfig(max_questions=10))
    assert source.startswith("embedded")
    assert {k: len(v) for k, v in splits.items()} == {"train": 10, "tune": 10, "dev": 10}


# --------------------------------------------------------------------------- splits
def test_split_has_no_shared_article(splits, xquad_records):
    titles = {name: {r["title"] for r in recs} for name, recs in splits.items()}
    assert not titles["train"] & titles["tune"]
    assert not titles["train"] & titles["dev"]
    assert not titles["tune"] & titles["dev"]
    # Every question is in exactly one split.
    ids = Counter(r["id"] for recs in splits.values() for r in recs)
    assert len(ids) == len(xquad_records) and max(ids.values()) == 1


def test_split_fractions_roughly_respected(splits, xquad_records):
    n = len(xquad_records)
    for name, target in FRACTIONS.items():
        share = len(splits[name]) / n
        assert target <= share <= target + 0.06, (name, share)
    assert len(splits["train"]) / n > 0.5


def test_split_is_deterministic_per_seed(splits, xquad_records):
    again = split_by_article(xquad_records, FRACTIONS, seed=13)
    assert all(split_hash(again[k]) == split_hash(splits[k]) for k in splits)
    other = split_by_article(xquad_records, FRACTIONS, seed=14)
    assert {r["title"] for r in other["dev"]} != {r["title"] for r in splits["dev"]}


def test_manifest_counts_and_hashes(splits):
    doc = manifest(splits, "embedded:xquad.en.json")
    assert doc["source"] == "embedded:xquad.en.json"
    for name, recs in splits.items():
        part = doc["splits"][name]
        assert part["questions"] == len(recs)
        assert part["articles"] == len({r["title"] for r in recs})
        assert len(part["sha256"]) == 64 and part["sha256"] == split_hash(recs)
    assert len({p["sha256"] for p in doc["splits"].values()}) == 3


# --------------------------------------------------------------------------- features
@pytest.fixture(scope="module")
def train_windows(splits, tokenizer):
    return build_train_features(splits["train"], tokenizer, 256, 128)


def test_train_labels_map_back_to_the_gold_answer(splits, train_windows, tokenizer):
    records = splits["train"]
    # Re-tokenise exactly as the labels were built, keeping the offsets and sample map.
    enc = _tokenize(tokenizer, [r["question"] for r in records], [r["context"] for r in records],
                    256, 128)
    assert len(enc["input_ids"]) == len(train_windows)
    assert enc["input_ids"] == train_windows["input_ids"]
    starts, ends = train_windows["start_positions"], train_windows["end_positions"]
    answered = exact = 0
    for i, (s, e) in enumerate(zip(starts, ends)):
        rec = records[enc["overflow_to_sample_mapping"][i]]
        gold = rec["answers"]["text"][0]
        gold_start = rec["answers"]["answer_start"][0]
        offsets, seq_ids = enc["offset_mapping"][i], enc.sequence_ids(i)
        ctx = [k for k, sid in enumerate(seq_ids) if sid == 1]
        first, last = offsets[ctx[0]][0], offsets[ctx[-1]][1]
        inside = first <= gold_start and gold_start + len(gold) <= last
        if s == 0:
            assert e == 0
            assert not inside, f"window {i} holds the answer but is labelled CLS"
            continue
        assert inside
        assert seq_ids[s] == 1 and seq_ids[e] == 1 and s <= e
        answered += 1
        exact += rec["context"][offsets[s][0]:offsets[e][1]] == gold
    assert answered >= len(records) * 0.9  # most questions fit a 256-token window
    assert exact / answered >= 0.99, f"{exact}/{answered} spans map back exactly"


def test_train_windows_are_windows(train_windows, splits):
    assert len(train_windows) > len(splits["train"])  # long contexts overflow
    assert max(len(x) for x in train_windows["input_ids"]) <= 256
    assert train_windows["feature_index"] == list(range(len(train_windows)))
    assert all(set(m) == {1} for m in train_windows["attention_mask"])


def test_eval_features_carry_example_id_and_context_offsets(splits, tokenizer):
    records = splits["dev"][:30]
    feats = build_eval_features(records, tokenizer, 128, 64)
    ids = {r["id"] for r in records}
    assert set(feats["example_id"]) == ids
    assert len(feats) > len(records)  # 128-token windows split most contexts
    by_id = {r["id"]: r for r in records}
    for i in range(len(feats)):
        offsets, type_ids = feats[i]["offset_mapping"], feats[i]["token_type_ids"]
        ids_row = feats[i]["input_ids"]
        context = by_id[feats[i]["example_id"]]["context"]
        assert offsets[0] is None  # CLS
        assert ids_row[0] == tokenizer.cls_token_id
        for o, tid, tok in zip(offsets, type_ids, ids_row):
            if o is None:
                # question tokens and special tokens have no offsets
                assert tid == 0 or tok == tokenizer.sep_token_id
            else:
                assert tid == 1 and 0 <= o[0] <= o[1] <= len(context)
        assert any(o is not None for o in offsets)


def test_same_tokenization_bert_vs_distilbert(splits, tokenizer, distil_tokenizer):
    check_same_tokenization(tokenizer, distil_tokenizer, splits["train"], 128, 64, "bert", "distil")


def test_different_vocab_refused(splits, tokenizer, tmp_path):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "what", "is", "of"]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    other = BertTokenizer.from_pretrained(str(tmp_path))
    assert len(other.get_vocab()) == len(tokens)
    with pytest.raises(StudyError, match="tokenizer mismatch"):
        check_same_tokenization(tokenizer, other, splits["train"], 128, 64, "teacher-x", "student-y")


def test_embedded_path_is_the_packaged_file():
    assert EMBEDDED_DATA.exists() and EMBEDDED_DATA.name == "xquad.en.json"
