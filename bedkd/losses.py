"""The BeDKD distillation loss (released code; used by both DMM and AKD).

    L = alpha * CE(s, y) + (1 - alpha) * ( KL(softmax(t/T) || softmax(s/T)) + w_h * MSE(h_s, h_t) )

s, t: student / teacher logits [B, k]; h_s, h_t: last hidden states [B, L, H], MSE over real
(non-pad) tokens. AKD's released punish pass uses -L on the detected rows; the bounded
alternative is the complementary-label loss below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor  # scalar, differentiable
    ce: float
    kl: float
    mse: float


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), mean over the batch. [B, k] x [B, k] -> scalar."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def masked_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens. [B, L, H] x [B, L, H] x [B, L] -> scalar."""
    m = mask.unsqueeze(-1).to(student_hidden.dtype)
    sq = (student_hidden - teacher_hidden) ** 2 * m
    return sq.sum() / (m.sum() * student_hidden.shape[-1]).clamp_min(1.0)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    student_hidden: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    hidden_weight: float = 1.0,
) -> LossParts:
    s = student_logits.float()
    t = teacher_logits.float()
    ce = F.cross_entropy(s, labels)
    kl = kl_teacher_student(s, t, temperature)
    if student_hidden is not None and teacher_hidden is not None and hidden_weight > 0:
        assert mask is not None
        mse = masked_mse(student_hidden.float(), teacher_hidden.float(), mask)
    else:
        mse = torch.zeros((), device=s.device)
    total = alpha * ce + (1.0 - alpha) * (kl + hidden_weight * mse)
    return LossParts(total=total, ce=float(ce.detach()), kl=float(kl.detach()), mse=float(mse.detach()))


def complement_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log(1 - p_s(y | x)), mean over the batch. [B, k] x [B] -> scalar, >= 0.

    Pushes probability away from the flagged (suspicious) label without a target class, and,
    unlike gradient ascent on CE/KL, is bounded below: it goes to 0 once p_s(y) -> 0, so the
    punish pass stops pulling instead of diverging. Computed in log space for stability:
    log(1 - p_y) = logsumexp over the other classes - logsumexp over all classes.
    """
    s = student_logits.float()
    others = s.scatter(1, labels.unsqueeze(1), float("-inf"))
    return (torch.logsumexp(s, dim=1) - torch.logsumexp(others, dim=1)).mean()


def capped_ascent_loss(student_logits: torch.Tensor, labels: torch.Tensor, cap: float) -> torch.Tensor:
    """-mean_i min(CE_i, cap): gradient ascent on the flagged label's CE, bounded at ``cap`` nats.

    [B, k] x [B] -> scalar in [-cap, 0]. A row stops contributing once p_s(y | x) < exp(-cap), so,
    unlike the released ascent, the term cannot diverge; unlike ``complement_loss`` (whose logit
    gradient p_s(y) fades as p_s(y) -> 0), it keeps a full-strength push (1 - p_s(y)) until the
    cap, so the student learns that the flagged rows' trigger points *away* from the flagged label.
    """
    ce = F.cross_entropy(student_logits.float(), labels, reduction="none")
    return -torch.clamp(ce, max=cap).mean()
