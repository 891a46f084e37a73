"""Teacher–student distillation, one code path for every method that uses it.

The teacher is a frozen float copy of the model taken *before* any compression surgery
(``distillation`` prepares first in ``METHOD_ORDER``), so the student starts from the
teacher's weights. The model must already be fine-tuned: ``model.init_checkpoint`` or a
``finetune`` stage in the same run. The teacher runs in eval mode under ``no_grad``; it is
not a submodule of the Lightning module, so it is never optimised nor checkpointed.
Hidden states are requested and attention scores captured only when their weight is > 0.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from lowbit.algorithms.distillation.losses import (LOGIT_LOSSES, attention_score_mse, hidden_mse, kl_divergence,
                                                   soft_cross_entropy)
from lowbit.errors import check
from lowbit.methods import Method
from lowbit.quant.attention import attention_hooks, enable_lowbit_attention
from lowbit.quant.targets import find_self_attention

__all__ = ["Distillation", "attention_score_mse", "hidden_mse", "kl_divergence", "soft_cross_entropy"]


class _ScoreCapture:
    """Collects each layer's pre-softmax scores (and padding mask) during one forward.

    The student's capture records only graph-carrying scores (training forwards), so
    validation never stores anything; the teacher's is switched on around its forward.
    """

    def __init__(self, only_with_grad: bool):
        self.scores: list[torch.Tensor] = []
        self.masks: list[torch.Tensor | None] = []
        self.only_with_grad = only_with_grad
        self.active = False

    def __call__(self, scores: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if scores.requires_grad if self.only_with_grad else self.active:
            self.scores.append(scores)
            self.masks.append(None if attention_mask is None else attention_mask <= -1e2)

    def take(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        out = (self.scores, self.masks)
        self.scores, self.masks = [], []
        return out


class Distillation(Method):
    name = "distillation"

    def __init__(self, logits_weight: float = 1.0, hidden_weight: float = 0.0, attention_weight: float = 0.0,
                 hard_label_weight: float = 0.0, logits_loss: str = "soft_ce", temperature: float = 1.0):
        for option, value in (("logits_weight", logits_weight), ("hidden_weight", hidden_weight),
                              ("attention_weight", attention_weight), ("hard_label_weight", hard_label_weight)):
            check(value >= 0, f"distillation.{option} must be >= 0, got {value!r}")
        check(logits_loss in LOGIT_LOSSES,
              f"distillation.logits_loss must be one of {sorted(LOGIT_LOSSES)}, got {logits_loss!r}")
        check(temperature > 0, f"distillation.temperature must be positive, got {temperature!r}")
        self.logits_weight, self.hidden_weight, self.attention_weight = logits_weight, hidden_weight, attention_weight
        self.task_loss_weight = hard_label_weight
        self.logits_loss, self.temperature = logits_loss, temperature
        self.teacher: nn.Module | None = None
        self._student_scores, self._teacher_scores = _ScoreCapture(only_with_grad=True), _ScoreCapture(False)

    def check_ready(self, has_finetuned_weights: bool) -> None:
        check(has_finetuned_weights, "distillation needs a fine-tuned teacher: set model.init_checkpoint=PATH "
                                     "or finetune.epochs>0 (fine-tune it first in this run)")

    def prepare(self, model: nn.Module) -> nn.Module:
        self.teacher = copy.deepcopy(model).eval()
        self.teacher.requires_grad_(False)
        if self.attention_weight > 0:
            for net, capture in ((model, self._student_scores), (self.teacher, self._teacher_scores)):
                for _, attn in find_self_attention(net):
                    attention_hooks(attn).score_observers.append(capture)
                enable_lowbit_attention(net)
        return model

    def forward_kwargs(self) -> dict[str, Any]:
        return {"output_hidden_states": True} if self.hidden_weight > 0 else {}

    def loss_terms(self):
        return [self.losses]

    def losses(self, student_out: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        teacher = self.teacher
        device = student_out.logits.device
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        self._teacher_scores.active = self.attention_weight > 0
        with torch.no_grad():
            teacher_out = teacher(**inputs, **self.forward_kwargs())
        self._teacher_scores.active = False
        s_scores, s_masks = self._student_scores.take()
        t_scores, _ = self._teacher_scores.take()
        losses: dict[str, torch.Tensor] = {}
        if self.logits_weight > 0:
            s, t = student_out.logits, teacher_out.logits
            if s.shape[-1] == 1:  # regression (STS-B): MSE on the predicted score
                loss = nn.functional.mse_loss(s, t)
            else:
                loss = LOGIT_LOSSES[self.logits_loss](s, t, self.temperature)
            losses["logits"] = self.logits_weight * loss
        if self.hidden_weight > 0:
            losses["hidden"] = self.hidden_weight * hidden_mse(student_out.hidden_states, teacher_out.hidden_states)
        if self.attention_weight > 0:
            check(len(s_scores) == len(t_scores) > 0, "attention distillation captured no scores")
            losses["attn"] = self.attention_weight * attention_score_mse(s_scores, t_scores, s_masks)
        return losses

    def summary(self) -> dict[str, Any]:
        return {"teacher_frozen": self.teacher is not None and not any(p.requires_grad for p in self.teacher.parameters())}
