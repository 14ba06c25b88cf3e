from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bedkd.losses import distill_loss, kl_teacher_student, masked_mse


def test_alpha_one_is_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    h_s, h_t = torch.randn(8, 5, 4, generator=g), torch.randn(8, 5, 4, generator=g)
    mask = torch.ones(8, 5, dtype=torch.long)
    parts = distill_loss(s, t, y, alpha=1.0, temperature=2.0, student_hidden=h_s, teacher_hidden=h_t, mask=mask)
    assert torch.allclose(parts.total, F.cross_entropy(s, y))


def test_soft_term_zero_when_student_matches_teacher() -> None:
    g = torch.Generator().manual_seed(1)
    t = torch.randn(6, 2, generator=g)
    h = torch.randn(6, 7, 4, generator=g)
    y = torch.randint(0, 2, (6,), generator=g)
    mask = torch.ones(6, 7, dtype=torch.long)
    parts = distill_loss(t.clone(), t, y, alpha=0.3, temperature=1.5, student_hidden=h.clone(), teacher_hidden=h, mask=mask)
    assert abs(parts.kl) < 1e-6 and abs(parts.mse) < 1e-12
    assert torch.allclose(parts.total, 0.3 * F.cross_entropy(t, y), atol=1e-6)


def test_kl_matches_hand_computation() -> None:
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # softmax -> (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert abs(float(kl_teacher_student(s, t, 1.0)) - expected) < 1e-6
    # temperature softens the teacher: at T=2, p_t = softmax(log(3)/2, 0)
    p = 3**0.5 / (1 + 3**0.5)
    exp2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert abs(float(kl_teacher_student(s, t, 2.0)) - exp2) < 1e-6


def test_mse_ignores_padding() -> None:
    h_t = torch.zeros(1, 3, 2)
    h_s = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [100.0, 100.0]]])  # last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert float(masked_mse(h_s, h_t, mask)) == 1.0


def test_hidden_weight_zero_drops_mse() -> None:
    s, t = torch.zeros(2, 2), torch.zeros(2, 2)
    y = torch.tensor([0, 1])
    h_s, h_t = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    mask = torch.ones(2, 3, dtype=torch.long)
    with_h = distill_loss(s, t, y, alpha=0.0, temperature=1.0, student_hidden=h_s, teacher_hidden=h_t, mask=mask)
    without = distill_loss(s, t, y, alpha=0.0, temperature=1.0, student_hidden=h_s, teacher_hidden=h_t, mask=mask, hidden_weight=0.0)
    assert float(with_h.total) == 1.0 and float(without.total) == 0.0
