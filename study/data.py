"""SQuAD-format data: loading, validation, the by-article split, tokenised features.

A *record* is one question in the flat layout of the hub `squad` data set:
{id, title, context, question, answers: {text: [...], answer_start: [...]}}.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from study.config import DataConfig
from study.errors import StudyError, hub_reason
from study.layout import DataDir

SPLITS = ("train", "tune", "dev")
EMBEDDED_DATA = Path(__file__).with_name("data") / "xquad.en.json"
# Columns a QA model may consume; everything else in a feature is metadata.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# --------------------------------------------------------------------------- records
def _ids(bad: list[str]) -> str:
    shown = ", ".join(bad[:5])
    return shown + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")


def records_from_squad(doc: Any, source: str, require_answers: bool = True) -> list[dict]:
    """Flatten a SQuAD v1.1 document, refusing what the rest of the study cannot use.

    With require_answers=False (questions to answer, not to train on) a question may
    have no `answers`; it gets empty ones."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise StudyError(f"{source}: not SQuAD format (expected a top-level 'data' list)")
    records: list[dict] = []
    missing: list[str] = []
    for a_i, article in enumerate(doc["data"]):
        title = article.get("title", f"article-{a_i}") if isinstance(article, dict) else None
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise StudyError(f"{source}: article {a_i} has no 'paragraphs' list")
        for p_i, para in enumerate(paragraphs):
            if not isinstance(para, dict) or not isinstance(para.get("context"), str) \
                    or not isinstance(para.get("qas"), list):
                raise StudyError(f"{source}: article {title!r} paragraph {p_i} needs 'context' and 'qas'")
            for q_i, qa in enumerate(para["qas"]):
                qid = qa.get("id") if isinstance(qa, dict) else None
                qid = str(qid) if qid is not None else f"{title}/{p_i}/{q_i}"
                answers = qa.get("answers") if isinstance(qa, dict) else None
                if answers is None and not require_answers:
                    answers = []
                if (not isinstance(qa, dict) or "id" not in qa or not isinstance(qa.get("question"), str)
                        or not isinstance(answers, list) or (require_answers and not answers)
                        or not all(isinstance(a, dict) and isinstance(a.get("text"), str)
                                   and isinstance(a.get("answer_start"), int)
                                   and a["answer_start"] >= 0 for a in answers)):
                    missing.append(qid)
                    continue
                records.append({
                    "id": qid, "title": str(title), "context": para["context"],
                    "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers],
                                "answer_start": [a["answer_start"] for a in answers]},
                })
    if missing:
        raise StudyError(f"{source}: questions with missing or malformed fields "
                         f"(id, question, answers[text, answer_start]): {_ids(missing)}")
    validate_records(records, source)
    return records


def _blank(text: str) -> bool:
    return not text.strip()


# What no question may leave blank (only whitespace): a model can neither learn from nor
# answer it, and an empty gold answer scores every prediction 0.
BLANK_CHECKS = (
    ("empty question", lambda r: _blank(r["question"])),
    ("empty context", lambda r: _blank(r["context"])),
    ("empty answer text", lambda r: any(_blank(t) for t in r["answers"]["text"])),
)


def validate_records(records: list[dict], source: str) -> None:
    """The one check of records to train on, score or answer (`study prepare`, `study
    predict --data`). An answer_start of -1 is a text given without its position (JSON
    Lines for `study predict`): only its text is checked."""
    for what, bad in BLANK_CHECKS:
        ids = [r["id"] for r in records if bad(r)]
        if ids:
            raise StudyError(f"{source}: {what} for questions {_ids(ids)}")
    misplaced = [
        r["id"] for r in records
        if any(s >= 0 and r["context"][s:s + len(t)] != t
               for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"]))
    ]
    if misplaced:
        raise StudyError(f"{source}: answer text not found at its answer_start for questions {_ids(misplaced)}")
    seen: set[str] = set()
    dupes = [r["id"] for r in records if r["id"] in seen or seen.add(r["id"])]
    if dupes:
        raise StudyError(f"{source}: duplicate question ids {_ids(dupes)}")


def read_data_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"cannot read data file {path}: {exc}") from None


def load_squad_file(path: Path | str) -> list[dict]:
    path = Path(path)
    text = read_data_file(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StudyError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    return records_from_squad(doc, str(path))


def to_squad_json(records: Iterable[dict]) -> dict:
    """Records back to the official nested SQuAD layout (articles > paragraphs > qas)."""
    articles: dict[str, dict[str, list]] = {}
    for r in records:
        paras = articles.setdefault(r["title"], {})
        paras.setdefault(r["context"], []).append({
            "id": r["id"], "question": r["question"],
            "answers": [{"text": t, "answer_start": s}
                        for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])],
        })
    return {"version": "1.1", "data": [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras.items()]}
        for title, paras in articles.items()
    ]}


# --------------------------------------------------------------------------- splits
def split_by_article(records: list[dict], fractions: dict[str, float], seed: int) -> dict[str, list[dict]]:
    """Whole articles go to one split each, so no paragraph leaks across splits.

    Articles are shuffled with `seed`, then dealt greedily: each split takes articles
    until it holds its share of the questions; the rest is train.
    """
    by_title: dict[str, list[dict]] = {}
    for r in records:
        by_title.setdefault(r["title"], []).append(r)
    titles = sorted(by_title)
    random.Random(seed).shuffle(titles)
    total = len(records)
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    queue = list(titles)
    for name in ("dev", "tune"):
        target = fractions[name] * total
        while queue and len(out[name]) < target and len(queue) > 1:
            out[name].extend(by_title[queue.pop(0)])
    for title in queue:
        out["train"].extend(by_title[title])
    return out


def cap_split(records: list[dict], max_questions: int | None) -> list[dict]:
    return records if max_questions is None else records[:max_questions]


def split_hash(records: list[dict]) -> str:
    blob = json.dumps(records, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def manifest(splits: dict[str, list[dict]], source: str) -> dict:
    return {
        "source": source,
        "splits": {
            name: {
                "questions": len(recs),
                "articles": len({r["title"] for r in recs}),
                "sha256": split_hash(recs),
                "titles": sorted({r["title"] for r in recs}),
            }
            for name, recs in splits.items()
        },
    }


def _records_from_hub(split) -> list[dict]:
    return [{"id": str(r["id"]), "title": r["title"], "context": r["context"],
             "question": r["question"],
             "answers": {"text": list(r["answers"]["text"]),
                         "answer_start": [int(s) for s in r["answers"]["answer_start"]]}}
            for r in split]


def load_hub_squad(name: str) -> dict[str, list[dict]]:
    try:
        from datasets import load_dataset
        ds = load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise StudyError(
            f"cannot load data set {name!r} from the Hugging Face hub ({hub_reason(exc)}); "
            "offline? set data.source=local and data.path/data.dev_path to SQuAD v1.1 JSON files"
        ) from None
    return {"train": _records_from_hub(ds["train"]), "dev": _records_from_hub(ds["validation"])}


def build_splits(cfg: DataConfig) -> tuple[dict[str, list[dict]], str]:
    """Load the configured source and return train/tune/dev records and a source label."""
    fractions = {"tune": cfg.tune_fraction, "dev": cfg.dev_fraction}
    if cfg.source == "hub":
        hub = load_hub_squad(cfg.hub_name)
        validate_records(hub["train"], f"hub:{cfg.hub_name}")
        # Official dev stays dev; tune is a held-out slice of the train articles.
        parts = split_by_article(hub["train"], {"tune": cfg.tune_fraction, "dev": 0.0}, cfg.split_seed)
        splits = {"train": parts["train"], "tune": parts["tune"], "dev": hub["dev"]}
        source = f"hub:{cfg.hub_name}"
    elif cfg.source == "local" and cfg.dev_path:
        train = load_squad_file(cfg.path)
        parts = split_by_article(train, {"tune": cfg.tune_fraction, "dev": 0.0}, cfg.split_seed)
        splits = {"train": parts["train"], "tune": parts["tune"], "dev": load_squad_file(cfg.dev_path)}
        source = f"local:{cfg.path}+{cfg.dev_path}"
    else:
        path = EMBEDDED_DATA if cfg.source == "embedded" else Path(cfg.path)
        splits = split_by_article(load_squad_file(path), fractions, cfg.split_seed)
        source = "embedded:xquad.en.json" if cfg.source == "embedded" else f"local:{path}"
    splits = {name: cap_split(recs, cfg.max_questions) for name, recs in splits.items()}
    empty = [name for name, recs in splits.items() if not recs]
    if empty:
        raise StudyError(f"empty split(s) {', '.join(empty)}: the data has too few articles "
                         "for data.tune_fraction/data.dev_fraction")
    return splits, source


def write_splits(splits: dict[str, list[dict]], folder: DataDir) -> None:
    folder.root.mkdir(parents=True, exist_ok=True)
    for name, recs in splits.items():
        folder.split(name).write_text(json.dumps(to_squad_json(recs), ensure_ascii=False))


def read_split(folder: DataDir, name: str) -> list[dict]:
    path = folder.split(name)
    if not path.exists():
        raise StudyError(f"split {name!r} not found at {path}: run `study prepare` first")
    return load_squad_file(path)


def references(records: list[dict]) -> dict[str, list[str]]:
    return {r["id"]: list(r["answers"]["text"]) for r in records}


# --------------------------------------------------------------------------- features
def _tokenize(tokenizer, questions, contexts, max_length: int, stride: int):
    if tokenizer.padding_side != "right":
        raise StudyError("the tokenizer pads on the left; question-first windows need right padding")
    return tokenizer(
        [q.lstrip() for q in questions], contexts,
        truncation="only_second", max_length=max_length, stride=stride,
        return_overflowing_tokens=True, return_offsets_mapping=True,
        return_token_type_ids=True, padding=False,
    )


def train_features(batch: dict, tokenizer, max_length: int, stride: int) -> dict:
    """Windows with start/end token labels; a window without the answer points at CLS (0)."""
    enc = _tokenize(tokenizer, batch["question"], batch["context"], max_length, stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(offsets_all):
        cls_index = enc["input_ids"][i].index(tokenizer.cls_token_id)
        seq_ids = enc.sequence_ids(i)
        answers = batch["answers"][sample_map[i]]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        ctx_start = seq_ids.index(1)
        ctx_end = len(seq_ids) - 1 - seq_ids[::-1].index(1)
        if offsets[ctx_start][0] > start_char or offsets[ctx_end][1] < end_char:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        s = ctx_start
        while s <= ctx_end and offsets[s][0] <= start_char:
            s += 1
        e = ctx_end
        while e >= ctx_start and offsets[e][1] >= end_char:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    enc["start_positions"] = starts
    enc["end_positions"] = ends
    return dict(enc)


def eval_features(batch: dict, tokenizer, max_length: int, stride: int) -> dict:
    """Windows with their example id and context-only offsets (None elsewhere)."""
    enc = _tokenize(tokenizer, batch["question"], batch["context"], max_length, stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    enc["example_id"] = [batch["id"][j] for j in sample_map]
    enc["offset_mapping"] = [
        [o if s == 1 else None for o, s in zip(offsets, enc.sequence_ids(i))]
        for i, offsets in enumerate(enc["offset_mapping"])
    ]
    return dict(enc)


def to_dataset(records: list[dict]):
    from datasets import Dataset
    return Dataset.from_list(records)


def build_train_features(records: list[dict], tokenizer, max_length: int, stride: int,
                         num_proc: int | None = None):
    """`num_proc` processes tokenise contiguous shards, joined in order: the same windows."""
    ds = to_dataset(records)
    feats = ds.map(train_features, batched=True, remove_columns=ds.column_names,
                   fn_kwargs=dict(tokenizer=tokenizer, max_length=max_length, stride=stride),
                   num_proc=num_proc, desc="train windows")
    # feature_index lets the teacher-logit cache be looked up row by row.
    return feats.add_column("feature_index", list(range(len(feats))))


def build_eval_features(records: list[dict], tokenizer, max_length: int, stride: int,
                        num_proc: int | None = None):
    ds = to_dataset(records)
    return ds.map(eval_features, batched=True, remove_columns=ds.column_names,
                  fn_kwargs=dict(tokenizer=tokenizer, max_length=max_length, stride=stride),
                  num_proc=num_proc, desc="eval windows")


def features_hash(features) -> str:
    h = hashlib.sha256()
    for ids in features["input_ids"]:
        h.update(json.dumps(ids).encode())
    return h.hexdigest()


def check_same_tokenization(teacher_tok, student_tok, records: list[dict], max_length: int,
                            stride: int, teacher_name: str, student_name: str) -> None:
    """Distillation compares logits position by position: both must see the same windows."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise StudyError(f"tokenizer mismatch: teacher {teacher_name!r} and student {student_name!r} "
                         "have different vocabularies; distillation needs identical tokenisation")
    sample = records[: min(len(records), 64)]
    q = [r["question"] for r in sample]
    c = [r["context"] for r in sample]
    a = _tokenize(teacher_tok, q, c, max_length, stride)["input_ids"]
    b = _tokenize(student_tok, q, c, max_length, stride)["input_ids"]
    if a != b:
        raise StudyError(f"tokenizer mismatch: teacher {teacher_name!r} and student {student_name!r} "
                         "split the same questions into different windows/ids")
