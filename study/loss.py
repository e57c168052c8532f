"""The task-specific distillation loss of DistilBERT on SQuAD, as a pure function.

loss = alpha_squad * CE(gold start/end) + alpha_ce * T^2 * KL(p_teacher^T || p_student^T),
each term averaged over start and end logits (run_squad_w_distillation.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossParts(NamedTuple):
    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor  # T^2-scaled KL, before alpha_ce


def span_ce(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """The CE that transformers' *ForQuestionAnswering models return as `.loss`."""
    ignored = start_logits.size(1)
    s = start_positions.clamp(0, ignored)
    e = end_positions.clamp(0, ignored)
    return (F.cross_entropy(start_logits, s, ignore_index=ignored)
            + F.cross_entropy(end_logits, e, ignore_index=ignored)) / 2


def soft_kl(student_logits, teacher_logits, temperature: float,
            attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), mean over the batch.

    Padding positions are masked out of both distributions, so the value does not
    depend on how much a batch was padded: cached and live teacher logits agree.
    """
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    if attention_mask is not None:
        pad = attention_mask == 0
        s = s.masked_fill(pad, torch.finfo(s.dtype).min)
        t = t.masked_fill(pad, torch.finfo(t.dtype).min)
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1),
                  reduction="batchmean", log_target=True)
    return kl * temperature ** 2


def distillation_loss(student_start, student_end, start_positions, end_positions,
                      teacher_start=None, teacher_end=None, *, temperature: float = 2.0,
                      alpha_ce: float = 0.5, alpha_squad: float = 0.5,
                      attention_mask: torch.Tensor | None = None) -> LossParts:
    ce = span_ce(student_start, student_end, start_positions, end_positions)
    if alpha_ce > 0:
        if teacher_start is None or teacher_end is None:
            raise ValueError("alpha_ce > 0 needs teacher logits")
        kd = (soft_kl(student_start, teacher_start, temperature, attention_mask)
              + soft_kl(student_end, teacher_end, temperature, attention_mask)) / 2
    else:
        kd = torch.zeros((), device=student_start.device)
    return LossParts(alpha_squad * ce + alpha_ce * kd, ce.detach(), kd.detach())
