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

from lowbit.algorithms.distillation.losses import (
    LOGIT_LOSSES,
    attention_score_mse,
    hidden_mse,
    kl_divergence,
    soft_cross_entropy,
)
from lowbit.edit import ModelEditor
from lowbit.errors import check
from lowbit.methods import Method

__all__ = ["Distillation", "ScoreCapture", "attention_score_mse", "hidden_mse", "kl_divergence", "soft_cross_entropy"]


class ScoreCapture(nn.Module):
    """A score observer: collects each layer's pre-softmax scores (and padding mask) during one forward.

    One instance is shared by every layer of a model (a plain attribute holder, no state_dict).
    The student's capture records only graph-carrying scores (training forwards), so validation
    never stores anything; the teacher's is switched on around its forward.
    """

    def __init__(self, only_with_grad: bool):
        super().__init__()
        self.scores: list[torch.Tensor] = []
        self.masks: list[torch.Tensor | None] = []
        self.only_with_grad = only_with_grad
        self.active = False

    def forward(self, scores: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
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
        self._student_scores, self._teacher_scores = ScoreCapture(only_with_grad=True), ScoreCapture(False)
        self.last_terms: set[str] = set()

    def check_ready(self, run) -> None:
        if run.purpose != "train":
            return
        check(run.has_finetuned_weights, "distillation needs a fine-tuned teacher: set model.init_checkpoint=PATH "
                                     "or finetune.epochs>0 (fine-tune it first in this run)")

    def prepare(self, model: nn.Module, edit) -> None:
        if edit.purpose != "train":  # a deployed / analysed model needs no teacher
            return
        # the teacher is a copy taken before any other method's surgery (distillation prepares first)
        self.teacher = copy.deepcopy(model).eval()
        self.teacher.requires_grad_(False)
        if self.attention_weight > 0:
            teacher_edit = ModelEditor(self.teacher, edit.purpose)
            teacher_edit.group = edit.group
            for net_edit, capture in ((edit, self._student_scores), (teacher_edit, self._teacher_scores)):
                for target, _ in net_edit.self_attention():
                    net_edit.add_attention_transform(target, "score_observers", capture)

    def forward_kwargs(self, mode: str) -> dict[str, Any]:
        return {"output_hidden_states": True} if mode == "train" and self.hidden_weight > 0 else {}

    def loss_terms(self):
        return [self.losses]

    def losses(self, student_out: Any, batch: Mapping[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        teacher = self.teacher
        device = student_out.logits.device
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        self._teacher_scores.active = self.attention_weight > 0
        with torch.no_grad():
            teacher_out = teacher(**inputs, **self.forward_kwargs("train"))
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
        self.last_terms = set(losses)
        return losses

    def convert(self, model: nn.Module, backend: str) -> nn.Module:
        self.teacher = None  # a deployed model carries no teacher
        return model

    def summary(self) -> dict[str, Any]:
        return {"loss_terms": ",".join(sorted(self.last_terms)), "teacher_frozen": self.teacher is not None and not any(p.requires_grad for p in self.teacher.parameters())}
