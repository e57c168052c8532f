"""The distillation loss as a pure function of toy tensors."""

from __future__ import annotations

import pytest
import torch

from study.loss import distillation_loss, soft_kl, span_ce

B, L = 3, 7


@pytest.fixture
def toy():
    g = torch.Generator().manual_seed(0)
    return {
        "s_start": torch.randn(B, L, generator=g), "s_end": torch.randn(B, L, generator=g),
        "t_start": torch.randn(B, L, generator=g) * 2, "t_end": torch.randn(B, L, generator=g) * 2,
        "start": torch.tensor([1, 4, 0]), "end": torch.tensor([2, 6, 0]),
    }


def loss(toy, **kw):
    return distillation_loss(toy["s_start"], toy["s_end"], toy["start"], toy["end"],
                             toy["t_start"], toy["t_end"], **kw)


def kl_by_hand(student, teacher, T):
    """sum_i p_t(i) * (log p_t(i) - log p_s(i)), averaged over the batch, from scratch."""
    p_t = torch.exp(teacher / T) / torch.exp(teacher / T).sum(-1, keepdim=True)
    p_s = torch.exp(student / T) / torch.exp(student / T).sum(-1, keepdim=True)
    return (p_t * (p_t.log() - p_s.log())).sum() / student.shape[0]


def test_identical_logits_give_zero_kd(toy):
    assert soft_kl(toy["s_start"], toy["s_start"].clone(), 3.0).item() == pytest.approx(0, abs=1e-6)
    parts = distillation_loss(toy["s_start"], toy["s_end"], toy["start"], toy["end"],
                              toy["s_start"].clone(), toy["s_end"].clone(), temperature=2.0)
    assert parts.kd.item() == pytest.approx(0, abs=1e-6)
    # ...so the loss is then the weighted CE alone.
    assert parts.loss.item() == pytest.approx(0.5 * parts.ce.item(), rel=1e-6)


def test_different_logits_give_positive_kd(toy):
    assert loss(toy).kd.item() > 1e-3


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_t_squared_scaling(toy, T):
    raw = (kl_by_hand(toy["s_start"], toy["t_start"], T)
           + kl_by_hand(toy["s_end"], toy["t_end"], T)) / 2
    parts = loss(toy, temperature=T)
    assert parts.kd.item() == pytest.approx(T ** 2 * raw.item(), rel=1e-5)
    assert soft_kl(toy["s_start"], toy["t_start"], T).item() == pytest.approx(
        T ** 2 * kl_by_hand(toy["s_start"], toy["t_start"], T).item(), rel=1e-5)


def test_loss_is_the_weighted_sum(toy):
    parts = loss(toy, temperature=3.0, alpha_ce=0.3, alpha_squad=0.6)
    assert parts.loss.item() == pytest.approx(0.3 * parts.kd.item() + 0.6 * parts.ce.item(), rel=1e-6)


def test_alpha_ce_changes_the_loss(toy):
    a = loss(toy, alpha_ce=0.2, alpha_squad=0.5).loss.item()
    b = loss(toy, alpha_ce=0.8, alpha_squad=0.5).loss.item()
    assert abs(a - b) > 1e-4


def test_alpha_squad_changes_the_loss(toy):
    a = loss(toy, alpha_ce=0.5, alpha_squad=0.2).loss.item()
    b = loss(toy, alpha_ce=0.5, alpha_squad=0.8).loss.item()
    assert abs(a - b) > 1e-4


def test_temperature_changes_the_loss(toy):
    assert abs(loss(toy, temperature=1.0).loss.item() - loss(toy, temperature=4.0).loss.item()) > 1e-4


def test_plain_fine_tuning_is_span_ce_and_the_models_own_loss(tiny_bert_qa):
    model = tiny_bert_qa.eval()
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1000, 2000, (4, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 5:] = 1
    # The last example's gold end lies past the window: the model ignores it, so must we.
    start = torch.tensor([0, 3, 7, 11])
    end = torch.tensor([0, 5, 9, 40])
    out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                start_positions=start, end_positions=end)
    parts = distillation_loss(out.start_logits, out.end_logits, start, end,
                              temperature=2.0, alpha_ce=0.0, alpha_squad=1.0)
    ce = span_ce(out.start_logits, out.end_logits, start, end)
    assert parts.loss.item() == pytest.approx(ce.item(), rel=1e-6)
    assert parts.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert parts.kd.item() == 0.0


def test_kd_is_invariant_to_padding_when_masked(toy):
    pad = 5
    g = torch.Generator().manual_seed(7)

    def padded(x):
        return torch.cat([x, torch.randn(B, pad, generator=g) * 50], dim=1)

    mask = torch.cat([torch.ones(B, L, dtype=torch.long), torch.zeros(B, pad, dtype=torch.long)], 1)
    ref = loss(toy, temperature=2.0, attention_mask=torch.ones(B, L, dtype=torch.long))
    got = distillation_loss(padded(toy["s_start"]), padded(toy["s_end"]), toy["start"], toy["end"],
                            padded(toy["t_start"]), padded(toy["t_end"]), temperature=2.0,
                            attention_mask=mask)
    assert got.kd.item() == pytest.approx(ref.kd.item(), rel=1e-5)
    assert torch.isfinite(got.loss)
    # Without the mask the garbage does leak in (the check above can fail).
    unmasked = distillation_loss(padded(toy["s_start"]), padded(toy["s_end"]), toy["start"],
                                 toy["end"], padded(toy["t_start"]), padded(toy["t_end"]),
                                 temperature=2.0)
    assert abs(unmasked.kd.item() - ref.kd.item()) > 1e-3


def test_kd_gradient_is_finite_with_padding(toy):
    s = torch.cat([toy["s_start"], torch.zeros(B, 3)], 1).requires_grad_()
    t = torch.cat([toy["t_start"], torch.zeros(B, 3)], 1)
    mask = torch.cat([torch.ones(B, L), torch.zeros(B, 3)], 1)
    soft_kl(s, t, 2.0, mask).backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[:, L:].abs().max().item() == 0.0


def test_alpha_ce_without_teacher_raises(toy):
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss(toy["s_start"], toy["s_end"], toy["start"], toy["end"],
                          temperature=2.0, alpha_ce=0.5, alpha_squad=0.5)
