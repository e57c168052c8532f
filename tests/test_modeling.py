"""Student init from teacher layers, loading refusals, and saving a usable student."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_bert_qa, tiny_bert_config
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    BertModel,
    DistilBertForQuestionAnswering,
)

from study.errors import StudyError
from study.modeling import (
    load_qa_model,
    load_tokenizer,
    model_inputs,
    save_model,
    student_from_layers,
)
from study.qa import QuestionAnswerer

LAYERS = (0, 2)


@pytest.fixture
def bert4(tokenizer):
    return make_tiny_bert_qa(len(tokenizer), seed=3, num_layers=4).eval()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def test_distilbert_student_copies_the_chosen_layers(bert4):
    student = student_from_layers(bert4, LAYERS, "distilbert")
    assert isinstance(student, DistilBertForQuestionAnswering)
    assert student.config.n_layers == 2 and student.config.dim == bert4.config.hidden_size
    for i, j in enumerate(LAYERS):
        src, dst = bert4.bert.encoder.layer[j], student.distilbert.transformer.layer[i]
        pairs = [
            (src.attention.self.query, dst.attention.q_lin),
            (src.attention.self.key, dst.attention.k_lin),
            (src.attention.self.value, dst.attention.v_lin),
            (src.attention.output.dense, dst.attention.out_lin),
            (src.attention.output.LayerNorm, dst.sa_layer_norm),
            (src.intermediate.dense, dst.ffn.lin1),
            (src.output.dense, dst.ffn.lin2),
            (src.output.LayerNorm, dst.output_layer_norm),
        ]
        for s, d in pairs:
            assert same(s.weight, d.weight) and same(s.bias, d.bias)
    # ...and not the skipped layer 1.
    assert not torch.equal(bert4.bert.encoder.layer[1].attention.self.query.weight,
                           student.distilbert.transformer.layer[1].attention.q_lin.weight)


def test_distilbert_embeddings_fold_in_segment_zero(bert4):
    student = student_from_layers(bert4, LAYERS, "distilbert")
    emb, demb = bert4.bert.embeddings, student.distilbert.embeddings
    expected = emb.word_embeddings.weight + emb.token_type_embeddings.weight[0]
    assert torch.allclose(demb.word_embeddings.weight, expected, atol=0, rtol=0)
    assert same(demb.position_embeddings.weight, emb.position_embeddings.weight)
    assert same(demb.LayerNorm.weight, emb.LayerNorm.weight)
    assert same(demb.LayerNorm.bias, emb.LayerNorm.bias)


def test_bert_student_copies_layers(bert4):
    student = student_from_layers(bert4, LAYERS, "bert")
    assert student.config.num_hidden_layers == 2
    src_state = bert4.bert.state_dict()
    for name, tensor in student.bert.embeddings.state_dict().items():
        assert same(tensor, src_state[f"embeddings.{name}"]), name
    for i, j in enumerate(LAYERS):
        for name, tensor in student.bert.encoder.layer[i].state_dict().items():
            assert same(tensor, src_state[f"encoder.layer.{j}.{name}"]), name


def test_both_architectures_compute_the_same_encoder_on_segment_zero(bert4):
    """DistilBERT's layer is BERT's layer: on all-zero segments the two students agree."""
    as_bert = student_from_layers(bert4, LAYERS, "bert").eval()
    as_distil = student_from_layers(bert4, LAYERS, "distilbert").eval()
    ids = torch.randint(1000, 3000, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        h_bert = as_bert.bert(input_ids=ids, attention_mask=mask,
                              token_type_ids=torch.zeros_like(ids)).last_hidden_state
        h_distil = as_distil.distilbert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(h_bert[0], h_distil[0], atol=1e-5)
    assert torch.allclose(h_bert[1, :6], h_distil[1, :6], atol=1e-5)


def test_layer_out_of_range_refused(bert4):
    with pytest.raises(StudyError, match="4-layer"):
        student_from_layers(bert4, (0, 4), "distilbert")


def test_load_qa_model_missing_path_refused(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        load_qa_model(str(tmp_path / "no-such-model"))
    with pytest.raises(StudyError):
        load_qa_model("/nonexistent/path")


def test_require_head_refuses_checkpoint_without_qa_head(tmp_path, tokenizer):
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer))).save_pretrained(tmp_path / "encoder")
    with pytest.raises(StudyError, match="qa_outputs"):
        load_qa_model(str(tmp_path / "encoder"), require_head=True)
    # Without the requirement it loads, with a fresh head (the teacher's starting point).
    assert load_qa_model(str(tmp_path / "encoder")).qa_outputs.out_features == 2


def test_saved_student_round_trips_through_from_pretrained(tmp_path, bert4, distil_tokenizer):
    student = student_from_layers(bert4, LAYERS, "distilbert").eval()
    out = tmp_path / "student"
    save_model(student, distil_tokenizer, out)
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))

    loaded = load_qa_model(str(out), require_head=True)
    assert isinstance(loaded, DistilBertForQuestionAnswering)
    for (name, a), (_, b) in zip(student.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    tok = load_tokenizer(str(out))
    assert tok.get_vocab() == distil_tokenizer.get_vocab()
    assert "token_type_ids" not in model_inputs(loaded, {"input_ids": 1, "token_type_ids": 2})
    # The student's tokenizer must not emit inputs DistilBERT has no use for.
    assert set(tok("What?", "Paris.")) == {"input_ids", "attention_mask"}

    # What a user with their own serving does: the Auto classes, nothing from this project.
    plain = AutoModelForQuestionAnswering.from_pretrained(out).eval()
    plain_tok = AutoTokenizer.from_pretrained(out)
    question, context = "What is the capital of France?", "Paris is the capital of France."
    enc = plain_tok(question, context, return_tensors="pt")
    with torch.no_grad():
        theirs = plain(**enc)
        ours = student(**model_inputs(student, enc))
    assert torch.equal(theirs.start_logits, ours.start_logits)
    assert torch.equal(theirs.end_logits, ours.end_logits)
    span = QuestionAnswerer.from_pretrained(str(out), device="cpu")(question, context)
    assert span.text and context[span.start:span.end] == span.text


def test_a_ready_student_keeps_distilberts_tokenizer(tmp_path):
    """student.layers: null (the paper profile's distilbert-base-uncased): the student's
    tokenizer is DistilBERT's, whatever AutoTokenizer would pick for a folder whose
    tokenizer_config names no class (transformers 5 picks BertTokenizer), so the exported
    student emits no token_type_ids."""
    from hub_cache import write_model_repo

    from study.config import StudentConfig
    from study.modeling import build_student

    folder = tmp_path / "distilbert-base-uncased"
    write_model_repo(folder, "distilbert")
    model, tok = build_student(StudentConfig(init=str(folder), layers=None), seed=1)
    assert isinstance(model, DistilBertForQuestionAnswering)
    assert type(tok).__name__.startswith("DistilBertTokenizer")
    assert set(tok("What?", "Paris.")) == {"input_ids", "attention_mask"}
    save_model(model, tok, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"].startswith("DistilBertTokenizer")
