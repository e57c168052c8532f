"""`study predict`: answer questions with an exported student or a registered model.

    study predict --model artifacts/default/best/model --data dev.json --out preds.json
    study predict --model models:/kd-qa-student-default@champion --data questions.jsonl
    study predict --model artifacts/default/best/model --question "..." --context "..."

--data is SQuAD v1.1 JSON or JSON Lines of {id, question, context[, answers]}. The
predictions file is the official one (id -> answer text); when the questions carry answers,
EM/F1 (study.metric, as in evaluation) are printed and written next to it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from study.config import Config
from study.data import read_data_file, records_from_squad, validate_records
from study.errors import StudyError
from study.files import ensure_writable, write_json
from study.metric import squad_metrics
from study.qa import QASettings, QuestionAnswerer


def load_answerer(cfg: Config, ref: str) -> QuestionAnswerer:
    """A model folder (settings from params), or an MLflow model URI (its logged settings)."""
    if ":/" not in ref:
        from study.fit import device
        return QuestionAnswerer.from_pretrained(ref, QASettings.from_config(cfg), device(cfg),
                                                cfg.runtime.mixed_precision)
    import mlflow
    from mlflow.exceptions import MlflowException

    from study.serving import QuestionAnsweringModel
    from study.storage import redact, redact_in
    from study.tracking import Tracker
    uri = cfg.tracking.uri
    Tracker(cfg)  # opens the store (a copied checkout's own artifacts, see repoint_artifacts)
    try:
        model = mlflow.pyfunc.load_model(ref).unwrap_python_model()
    except (MlflowException, OSError) as exc:
        raise StudyError(f"cannot load {ref} from MLflow ({redact(uri)}): "
                         f"{redact_in(str(exc).splitlines()[0][:200], uri)}") from None
    if not isinstance(model, QuestionAnsweringModel):
        raise StudyError(f"{ref} is not a question-answering model logged by `study best`")
    return model.answerer


def _answers(value, where: str) -> dict:
    """SQuAD's [{text, answer_start}], the hub's {text: [...], answer_start: [...]}, or [text]."""
    if value is None:
        return {"text": [], "answer_start": []}
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        texts, starts = value["text"], value.get("answer_start")
    elif isinstance(value, list) and all(isinstance(a, dict) for a in value):
        texts, starts = [a.get("text") for a in value], [a.get("answer_start") for a in value]
    elif isinstance(value, list):
        texts, starts = value, None
    else:
        raise StudyError(f"{where}: 'answers' must be a list or {{text: [...]}}")
    if not all(isinstance(t, str) for t in texts):
        raise StudyError(f"{where}: every answer needs a 'text' string")
    if starts is None or not all(isinstance(s, int) for s in starts) or len(starts) != len(texts):
        starts = [-1] * len(texts)  # no positions given: only the texts are scored
    return {"text": list(texts), "answer_start": list(starts)}


def records_from_lines(text: str, source: str) -> list[dict]:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StudyError(f"{where}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) \
                or not isinstance(row.get("context"), str) or row.get("id") is None:
            raise StudyError(f"{where}: needs 'id', 'question' and 'context' strings")
        records.append({"id": str(row["id"]), "question": row["question"],
                        "context": row["context"], "answers": _answers(row.get("answers"), where)})
    if not records:
        raise StudyError(f"{source}: no questions")
    validate_records(records, source)
    return records


def load_questions(path: Path) -> list[dict]:
    text = read_data_file(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return records_from_lines(text, str(path))  # JSON Lines (or malformed: said by line)
    if isinstance(doc, dict) and "data" in doc:
        return records_from_squad(doc, str(path), require_answers=False)
    if isinstance(doc, dict) and "question" in doc:
        return records_from_lines(text, str(path))  # JSON Lines of one question
    raise StudyError(f"{path}: neither SQuAD v1.1 JSON (a top-level 'data' list) nor JSON Lines "
                     "of {id, question, context}")


def predict_file(answerer: QuestionAnswerer, records: list[dict], out: Path) -> dict | None:
    spans = answerer.answer_records(records, progress=True)
    predictions = {r["id"]: spans[r["id"]].text for r in records}
    write_json(out, predictions)
    print(f"wrote {len(predictions)} answers to {out}")
    refs = {r["id"]: list(r["answers"]["text"]) for r in records if r["answers"]["text"]}
    if not refs:
        return None
    scores = {**squad_metrics(predictions, refs), "questions": len(refs)}
    metrics_path = out.with_name(f"{out.stem}.metrics.json")
    write_json(metrics_path, scores)
    print(f"EM {scores['exact_match']:.2f}  F1 {scores['f1']:.2f}  on {len(refs)} answered "
          f"questions; written to {metrics_path}")
    return scores


def run(cfg: Config, model: str, data: str | None = None, out: str | None = None,
        question: str | None = None, context: str | None = None) -> dict | None:
    one_question = question is not None and context is not None
    if (data is None) != one_question or (question is None) != (context is None):
        raise StudyError("give --data FILE, or both --question and --context")
    from study.fit import apply_runtime
    apply_runtime(cfg)
    if data is not None:
        data_path = Path(data)
        out_path = Path(out or "predictions.json")
        ensure_writable(out_path.parent)
        records = load_questions(data_path)  # bad input fails before a model is loaded
        return predict_file(load_answerer(cfg, model), records, out_path)
    validate_records([{"id": "1", "question": question, "context": context,
                       "answers": {"text": [], "answer_start": []}}], "--question/--context")
    span = load_answerer(cfg, model)(question, context)
    score = None if math.isnan(span.score) else round(span.score, 4)
    print(json.dumps({"answer": span.text, "score": score, "start": span.start, "end": span.end},
                     ensure_ascii=False))
    return None
