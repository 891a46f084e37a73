"""Distillation losses (functional API), each on plain tensors.

- ``soft_cross_entropy``: TernaryBERT's prediction loss, −Σ_c softmax(t/T)·log_softmax(s/T), batch mean.
- ``kl_divergence``: Hinton KD, KL(softmax(t/T) ‖ softmax(s/T))·T², batch mean (EdgeBERT, T=2).
- ``hidden_mse``: Σ over layers of the mean squared error of hidden states (embedding output included).
- ``attention_score_mse``: Σ over layers of the MSE of pre-softmax attention scores, with masked key
  positions set to zero in both (they hold −inf-like values after masking).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    target = F.softmax(teacher_logits / temperature, dim=-1)
    return -(target * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * temperature**2


def hidden_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    assert len(student) == len(teacher), "student and teacher must have the same number of layers"
    return sum(F.mse_loss(s, t) for s, t in zip(student, teacher))


def attention_score_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                        masked: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``masked[l]`` is a bool tensor broadcastable to the scores, True where a key is padding."""
    assert len(student) == len(teacher) == len(masked), "one score tensor and mask per layer"
    total = 0.0
    for s, t, m in zip(student, teacher, masked):
        if m is not None:
            s, t = s.masked_fill(m, 0.0), t.masked_fill(m, 0.0)
        total = total + F.mse_loss(s, t)
    return total


LOGIT_LOSSES = {"soft_ce": soft_cross_entropy, "kl": kl_divergence}
