"""Teacher–student distillation, one code path for every method that uses it.

The teacher is a frozen float copy of the model taken *before* any compression surgery
(``distillation`` prepares first in ``METHOD_ORDER``), so the student starts from the
teacher's weights. The model must already be fine-tuned: ``model.init_checkpoint`` or a
``finetune`` stage in the same run. Or the teacher is another model (``distillation.teacher``: a
``model`` spec whose ``init_checkpoint`` holds its fine-tuned weights — EdgeBERT distils an ALBERT
student from a larger fine-tuned model); it must read the student's token ids (same vocabulary size),
and hidden-state / attention-score losses need its layer count and sizes to match. The teacher runs in eval mode under ``no_grad``; it is
not a submodule of the Lightning module, so it is never optimised nor checkpointed.
Hidden states are requested and attention scores captured only when their weight is > 0.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

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
                 hard_label_weight: float = 0.0, logits_loss: str = "soft_ce", temperature: float = 1.0,
                 teacher: Any = None):
        for option, value in (("logits_weight", logits_weight), ("hidden_weight", hidden_weight),
                              ("attention_weight", attention_weight), ("hard_label_weight", hard_label_weight)):
            check(value >= 0, f"distillation.{option} must be >= 0, got {value!r}")
        check(logits_loss in LOGIT_LOSSES,
              f"distillation.logits_loss must be one of {sorted(LOGIT_LOSSES)}, got {logits_loss!r}")
        check(temperature > 0, f"distillation.temperature must be positive, got {temperature!r}")
        self.logits_weight, self.hidden_weight, self.attention_weight = logits_weight, hidden_weight, attention_weight
        self.task_loss_weight = hard_label_weight
        self.logits_loss, self.temperature = logits_loss, temperature
        self.teacher_spec = _teacher_spec(teacher)
        self.teacher: nn.Module | None = None
        self._student_scores, self._teacher_scores = ScoreCapture(only_with_grad=True), ScoreCapture(False)

    def check_ready(self, run) -> None:
        if run.purpose != "train":
            return
        if self.teacher_spec is not None:  # its own fine-tuned weights; the student may start from pretrained ones
            check(self.teacher_spec.init_checkpoint is not None,
                  "distillation.teacher.init_checkpoint must name the fine-tuned teacher's weights (a lowbit run's "
                  ".ckpt or a HF directory): a teacher with a fresh classifier head teaches noise")
            return
        check(run.has_finetuned_weights, "distillation needs a fine-tuned teacher: set model.init_checkpoint=PATH "
                                     "or finetune.epochs>0 (fine-tune it first in this run), or distillation.teacher")

    def _build_teacher(self, student: nn.Module) -> nn.Module:
        from lowbit.errors import LowbitConfigError

        try:
            teacher = self.teacher_spec.build(num_labels=student.config.num_labels)
        except LowbitConfigError as e:  # name the option: it is the teacher's spec, not the student's
            raise LowbitConfigError(str(e).replace("model.", "distillation.teacher.")) from None
        t, s = teacher.config, student.config
        check(t.vocab_size == s.vocab_size,
              f"distillation.teacher={self.teacher_spec.name!r} has a vocabulary of {t.vocab_size} tokens, the student "
              f"{s.vocab_size}: the teacher must read the student's token ids (same tokenizer)")
        if self.hidden_weight > 0 or self.attention_weight > 0:
            same = (t.num_hidden_layers, t.hidden_size, t.num_attention_heads) == \
                (s.num_hidden_layers, s.hidden_size, s.num_attention_heads)
            check(same, f"distillation.hidden_weight / attention_weight need a teacher of the student's shape: "
                        f"teacher {self.teacher_spec.name!r} has {t.num_hidden_layers} layers, hidden {t.hidden_size}, "
                        f"{t.num_attention_heads} heads; the student {s.num_hidden_layers}, {s.hidden_size}, "
                        f"{s.num_attention_heads} (logit distillation works with any teacher)")
        return teacher

    def prepare(self, model: nn.Module, edit) -> None:
        if edit.purpose != "train":  # a deployed / analysed model needs no teacher
            return
        # the teacher is a copy taken before any other method's surgery (distillation prepares first), or its own
        # model when distillation.teacher names one
        self.teacher = (copy.deepcopy(model) if self.teacher_spec is None else self._build_teacher(model)).eval()
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
        return losses

    def convert(self, model: nn.Module, backend: str) -> nn.Module:
        self.teacher = None  # a deployed model carries no teacher
        return model

    def summary(self) -> dict[str, Any]:
        frozen = self.teacher is not None and not any(p.requires_grad for p in self.teacher.parameters())
        # the configured terms, not the last step's: a run resumed after its last step reports the same
        terms = [name for name, weight in (("attn", self.attention_weight), ("hidden", self.hidden_weight),
                                           ("logits", self.logits_weight)) if weight > 0]
        return {"loss_terms": ",".join(terms), "teacher_frozen": frozen,
                "teacher": "student copy" if self.teacher_spec is None else self.teacher_spec.name}


def _teacher_spec(teacher: Any):
    """``distillation.teacher``: None (a copy of the fine-tuned student), a ``ModelSpec`` or a mapping of its
    fields (``name``, ``source``, ``init_checkpoint``, ...)."""
    from lowbit.errors import LowbitConfigError
    from lowbit.models import ModelSpec

    if teacher is None or isinstance(teacher, ModelSpec):
        return teacher
    if hasattr(teacher, "items"):  # a DictConfig or dict
        fields = {k: v for k, v in dict(teacher.items()).items() if k != "_target_"}
        check(isinstance(fields.get("name"), str), "distillation.teacher needs a name (a model package, hub id or "
                                                   f"directory), got {fields.get('name')!r}")
        try:
            return ModelSpec(**fields)
        except TypeError as e:
            known = "name, source, tokenizer, config, model_type, init_checkpoint"
            raise LowbitConfigError(f"distillation.teacher: {e} (fields: {known})") from None
        except LowbitConfigError as e:
            raise LowbitConfigError(str(e).replace("model.", "distillation.teacher.")) from None
    raise LowbitConfigError(f"distillation.teacher must be null or a model spec (name, source, init_checkpoint, ...), "
                            f"got {teacher!r}")
