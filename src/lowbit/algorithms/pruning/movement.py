"""``pruning=movement`` and ``pruning=soft_movement``: Sanh, Wolf & Rush, *Movement Pruning*, NeurIPS 2020.

Every encoder Linear weight (roles ``attention``, ``ffn``) gets learnable importance scores S
(``ScoredMask``); the mask computed from them enters the forward straight-through, so the scores
accumulate −W·∂L/∂W′ (W′ = W·mask): weights moving away from zero gain importance.

- ``movement`` (hard): keep the top (1 − s_t) fraction of the scores, per matrix or globally, with
  s_t on the cubic schedule of magnitude pruning (``cubic_sparsity``, shared warmups);
- ``soft_movement``: keep σ(S) > τ_t (τ on the same cubic ramp) and add λ_t·mean_l ‖σ(S_l)‖₁/n_l to
  the loss (λ_t = λ·τ_t/τ, as the authors' ``schedule_threshold``): the penalty decides the
  sparsity, which the summary reports.

Scores train in their own parameter group (``score_lr``, no weight decay). Embeddings are pruned by
magnitude on the same schedule (``embedding_sparsity``, as ``pruning=magnitude``). When training
ends the masks are baked (``ScoredMask.bake``): the mask of the last step stays, the scores are
emptied; ``convert`` bakes too. Exports and reloads (``deploy`` builds) have baked masks only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lowbit.algorithms.pruning.functional import (
    SCOPES,
    SCORE_INITS,
    cubic_sparsity,
    magnitude_masks,
    sigmoid_l1,
    threshold_keep,
    topk_masks,
)
from lowbit.algorithms.pruning.magnitude import (
    MagnitudePruning,
    _is_number,
    check_schedule_and_embeddings,
    check_sparsities,
    log_sparsity,
    masked_sparsity,
    sparsity_summary,
    total_training_steps,
)
from lowbit.algorithms.pruning.mask import ScoredMask, WeightMask
from lowbit.errors import check
from lowbit.methods import Method, ParamGroup
from lowbit.roles import ENCODER_LINEAR_ROLES
from lowbit.wandb_charts import SparsityCurve

PENALTY_SCHEDULES = ("threshold", "constant")
#: name of soft movement's loss term (logged as ``train/loss_scores_l1``)
PENALTY_TERM = "scores_l1"


class _ScoredPruning(Method):
    """What hard and soft movement pruning share: scores, their parameter group, embeddings, baking, the summary."""

    def __init__(self, initial_warmup: float, final_warmup: float, score_lr: float, score_init: str,
                 score_init_scale: float, embedding_sparsity: float | None, embedding_roles: Sequence[str]):
        check_schedule_and_embeddings(initial_warmup, final_warmup, embedding_sparsity, embedding_roles)
        check(_is_number(score_lr) and score_lr > 0, f"pruning.score_lr must be > 0, got {score_lr!r}")
        check(score_init in SCORE_INITS, f"pruning.score_init must be one of {SCORE_INITS}, got {score_init!r}")
        check(_is_number(score_init_scale), f"pruning.score_init_scale must be a finite number, got {score_init_scale!r}")
        self.initial_warmup, self.final_warmup = float(initial_warmup), float(final_warmup)
        self.score_lr, self.score_init, self.score_init_scale = float(score_lr), score_init, float(score_init_scale)
        self.embedding_sparsity = None if embedding_sparsity is None else float(embedding_sparsity)
        self.embedding_roles = tuple(str(r) for r in embedding_roles)
        #: module name -> (layer, its scored mask); ALBERT: one entry per shared layer
        self.encoder: dict[str, tuple[nn.Module, ScoredMask]] = {}
        self.embeddings: dict[str, tuple[nn.Module, WeightMask]] = {}

    # -- surgery -----------------------------------------------------------------------------
    def prepare(self, model: nn.Module, edit) -> None:
        baked = edit.purpose == "deploy"  # export / reload: the checkpoint's masks, no scores
        self.encoder = {}
        for target in edit.targets(*ENCODER_LINEAR_ROLES):
            weight = target.module.weight
            mask = ScoredMask(weight.shape, self.score_init, self.score_init_scale, device=weight.device,
                              dtype=weight.dtype, baked=baked)
            edit.add_weight_transform(target, mask)
            self.encoder[target.name] = (edit.layer(target.name), mask)
        check(bool(self.encoder), f"{self.label}: the model has no encoder Linear layers ({ENCODER_LINEAR_ROLES})")
        self.embeddings = {}
        if self.embedding_sparsity is not None:
            self.embeddings = MagnitudePruning._add_masks(edit, self.embedding_roles)
            check(bool(self.embeddings), f"{self.label}: the model has no layer with roles {self.embedding_roles}")

    def score_parameters(self) -> list[nn.Parameter]:
        return [mask.scores for _, mask in self.encoder.values()]

    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        # no weight decay: the authors' AdamW group for the scores has none (decay would be an unconfigured L2 penalty)
        return [ParamGroup(self.score_parameters(), "pruning_scores", lr=self.score_lr, weight_decay=0.0)] \
            if self.encoder else []

    # -- schedule ----------------------------------------------------------------------------
    def embedding_sparsity_at(self, step: int, total_steps: int, initial: float = 0.0) -> float | None:
        if self.embedding_sparsity is None:
            return None
        return cubic_sparsity(step, total_steps, min(initial, self.embedding_sparsity), self.embedding_sparsity,
                              self.initial_warmup, self.final_warmup)

    @torch.no_grad()
    def _update_embeddings(self, sparsity: float | None) -> None:
        if sparsity is None or not self.embeddings:
            return
        weights = {name: layer.weight for name, (layer, _) in self.embeddings.items()}
        for name, keep in magnitude_masks(weights, sparsity, "per_matrix").items():
            self.embeddings[name][1].set_mask(keep)

    def update_masks(self, step: int, total_steps: int) -> None:
        """Masks for training step ``step`` of ``total_steps`` from the current scores (and embedding weights)."""
        raise NotImplementedError

    @property
    def baked(self) -> bool:
        return bool(self.encoder) and all(mask.baked for _, mask in self.encoder.values())

    def bake(self, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        """Keep the masks of the last step, empty the scores (and drop their optimizer state)."""
        for _, mask in self.encoder.values():
            for optimizer in optimizers:
                optimizer.state.pop(mask.scores, None)
            mask.bake()

    def convert(self, model: nn.Module, backend: str) -> nn.Module:
        self.bake()
        return model

    # -- reporting ---------------------------------------------------------------------------
    def measured_sparsity(self) -> tuple[float, float | None]:
        """(encoder, embedding or None) sparsity of the masks now."""
        encoder = masked_sparsity([m for _, m in self.encoder.values()])
        embedding = masked_sparsity([m for _, m in self.embeddings.values()]) if self.embeddings else None
        return encoder, embedding

    def summary(self) -> dict[str, Any]:
        if not self.encoder:
            return {}  # never prepared
        return {"baked": self.baked, **sparsity_summary(self.encoder, self.embeddings, self.embedding_sparsity)}

    def callbacks(self) -> list:
        return [ScorePruningCallback(self)]


class MovementPruning(_ScoredPruning):
    """Hard movement pruning: keep the top (1 − s_t) of the scores, s_t on the cubic schedule.

    ``scope``: ``per_matrix`` (the authors' ``TopKBinarizer`` in every layer) or ``global`` (one
    top-k over every encoder Linear's scores, their ``--global_topk``, here exact at every step).
    Embeddings: magnitude pruning to ``embedding_sparsity`` on the same schedule, from
    min(initial_sparsity, embedding_sparsity).
    """

    def __init__(self, final_sparsity: float = 0.9, initial_sparsity: float = 0.0, scope: str = "per_matrix",
                 initial_warmup: float = 0.1, final_warmup: float = 0.2, score_lr: float = 1e-2,
                 score_init: str = "constant", score_init_scale: float = 0.0, embedding_sparsity: float | None = None,
                 embedding_roles: Sequence[str] = ("word_embedding",)):
        check_sparsities(final_sparsity, initial_sparsity)
        check(scope in SCOPES, f"pruning.scope must be one of {SCOPES}, got {scope!r}")
        super().__init__(initial_warmup, final_warmup, score_lr, score_init, score_init_scale, embedding_sparsity,
                         embedding_roles)
        self.final_sparsity, self.initial_sparsity, self.scope = float(final_sparsity), float(initial_sparsity), scope

    def scheduled_sparsity(self, step: int, total_steps: int) -> tuple[float, float | None]:
        """(encoder sparsity, embedding sparsity or None) at ``step`` of ``total_steps``."""
        encoder = cubic_sparsity(step, total_steps, self.initial_sparsity, self.final_sparsity,
                                 self.initial_warmup, self.final_warmup)
        return encoder, self.embedding_sparsity_at(step, total_steps, self.initial_sparsity)

    @torch.no_grad()
    def set_sparsity(self, sparsity: float, embedding_sparsity: float | None = None) -> None:
        """Top-k masks of the current scores at ``sparsity`` (per ``scope``); embeddings by magnitude."""
        scores = {name: mask.scores for name, (_, mask) in self.encoder.items()}
        for name, keep in topk_masks(scores, sparsity, self.scope).items():
            self.encoder[name][1].set_mask(keep)
        self._update_embeddings(embedding_sparsity)

    def update_masks(self, step: int, total_steps: int) -> None:
        self.set_sparsity(*self.scheduled_sparsity(step, total_steps))

    def summary(self) -> dict[str, Any]:
        return {"target_sparsity": self.final_sparsity, **super().summary()}


class SoftMovementPruning(_ScoredPruning):
    """Soft movement pruning: keep σ(S) > τ_t, with an L1 penalty on σ(S) that decides the sparsity.

    τ_t rises from ``initial_threshold`` to ``threshold`` on the cubic schedule (the authors ramp
    their threshold with the same ``schedule_threshold``). The loss term ``scores_l1`` is
    λ_t · mean over score tensors of ‖σ(S)‖₁/numel, with λ_t = ``penalty``·τ_t/τ
    (``penalty_schedule=threshold``, the authors' code) or ``penalty`` throughout (``constant``).
    At least int(0.005·n) + 1 weights of every matrix survive (their ``ThresholdBinarizer``).
    Embeddings: magnitude pruning to ``embedding_sparsity`` on the same ramp, from 0.
    """

    def __init__(self, threshold: float = 0.1, initial_threshold: float = 0.0, penalty: float = 400.0,
                 penalty_schedule: str = "threshold", initial_warmup: float = 0.1, final_warmup: float = 0.2,
                 score_lr: float = 1e-2, score_init: str = "constant", score_init_scale: float = 0.0,
                 embedding_sparsity: float | None = None, embedding_roles: Sequence[str] = ("word_embedding",)):
        check(_is_number(threshold) and 0.0 < threshold < 1.0,
              f"pruning.threshold must be in (0, 1) (a value of sigmoid(scores)), got {threshold!r}")
        check(_is_number(initial_threshold) and 0.0 <= initial_threshold <= threshold,
              f"pruning.initial_threshold must be in [0, pruning.threshold={threshold}], got {initial_threshold!r}")
        check(_is_number(penalty) and penalty >= 0, f"pruning.penalty must be >= 0, got {penalty!r}")
        check(penalty_schedule in PENALTY_SCHEDULES,
              f"pruning.penalty_schedule must be one of {PENALTY_SCHEDULES}, got {penalty_schedule!r}")
        super().__init__(initial_warmup, final_warmup, score_lr, score_init, score_init_scale, embedding_sparsity,
                         embedding_roles)
        self.threshold, self.initial_threshold = float(threshold), float(initial_threshold)
        self.penalty, self.penalty_schedule = float(penalty), penalty_schedule
        #: τ_t and λ_t of the current step (set by ``update_masks``)
        self.current_threshold, self.current_penalty = self.initial_threshold, 0.0

    def scheduled_threshold(self, step: int, total_steps: int) -> tuple[float, float]:
        """(τ_t, λ_t) at ``step`` of ``total_steps``: the authors' ``schedule_threshold`` on lowbit's cubic ramp."""
        tau = cubic_sparsity(step, total_steps, self.initial_threshold, self.threshold, self.initial_warmup,
                             self.final_warmup)
        weight = self.penalty * tau / self.threshold if self.penalty_schedule == "threshold" else self.penalty
        return tau, weight

    @torch.no_grad()
    def set_threshold(self, threshold: float, penalty_weight: float, embedding_sparsity: float | None = None) -> None:
        for _, mask in self.encoder.values():
            mask.set_mask(threshold_keep(mask.scores, threshold))
        self.current_threshold, self.current_penalty = float(threshold), float(penalty_weight)
        self._update_embeddings(embedding_sparsity)

    def update_masks(self, step: int, total_steps: int) -> None:
        self.set_threshold(*self.scheduled_threshold(step, total_steps), self.embedding_sparsity_at(step, total_steps))

    def scores_l1(self) -> torch.Tensor:
        """mean over score tensors of ‖σ(S)‖₁ / numel (unweighted)."""
        return sigmoid_l1(self.score_parameters())

    def loss_terms(self) -> list:
        if self.penalty == 0:
            return []

        def term(outputs, batch, step) -> dict[str, torch.Tensor]:
            if self.baked or self.current_penalty == 0:
                return {}
            return {PENALTY_TERM: self.current_penalty * self.scores_l1()}

        return [term]

    def summary(self) -> dict[str, Any]:
        out = {"threshold": self.threshold, "penalty": self.penalty, "penalty_weight": self.current_penalty}
        return {**out, **super().summary()}


class ScorePruningCallback(SparsityCurve):
    """Movement pruning's hooks in the main training stage.

    Before a training step: the masks of the current scores at the scheduled sparsity (or
    threshold) of ``trainer.global_step`` of ``trainer.estimated_stepping_batches`` (once per
    optimizer step: micro-batches of one step share it); logs ``pruning/sparsity`` (and
    ``pruning/embedding_sparsity``; soft: ``pruning/threshold``, ``pruning/penalty_weight``; to W&B, the sparsity
    per layer: ``SparsityCurve``). When fit ends: the masks are baked. Baked masks (a baked checkpoint resumed) do
    not change.
    """

    def __init__(self, method: _ScoredPruning):
        super().__init__(lambda: {name: mask for name, (_, mask) in method.encoder.items()})
        self.method = method
        self._updated_at: int | None = None
        self._measured: tuple[float, float | None] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        m = self.method
        if not m.baked and trainer.global_step != self._updated_at:
            m.update_masks(trainer.global_step, total_training_steps(trainer, m.label))
            self._updated_at, self._measured = trainer.global_step, None
        if self._measured is None:  # measured once per update (one device sync)
            self._measured = m.measured_sparsity()
        log_sparsity(pl_module, *self._measured)
        if isinstance(m, SoftMovementPruning):
            pl_module.log("pruning/threshold", m.current_threshold, on_step=True, on_epoch=False, batch_size=1)
            pl_module.log("pruning/penalty_weight", m.current_penalty, on_step=True, on_epoch=False, batch_size=1)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.method.bake(trainer.optimizers)
