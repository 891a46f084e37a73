"""``pruning=magnitude``: unstructured magnitude pruning, one-shot or gradual (cubic schedule).

Zhu & Gupta, *To prune, or not to prune* (2017): keep the largest |w|, raising the sparsity along
a cubic schedule; with Sanh et al.'s (2020) initial and final warmups. EdgeBERT prunes the encoder
this way and, separately, 60% of the word embeddings by magnitude (``embedding_sparsity``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lowbit.algorithms.pruning.functional import SCOPES, check_warmups, cubic_sparsity, magnitude_masks
from lowbit.algorithms.pruning.mask import WeightMask
from lowbit.errors import check
from lowbit.methods import Method
from lowbit.roles import EMBEDDING_ROLES, ENCODER_LINEAR_ROLES
from lowbit.wandb_charts import SparsityCurve

SCHEDULES = ("cubic", "oneshot")
#: (layer, its mask) by module name
MaskedLayers = dict[str, tuple[nn.Module, WeightMask]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_fraction(value: Any, option: str) -> None:
    check(_is_number(value) and 0.0 <= value < 1.0, f"pruning.{option} must be in [0, 1), got {value!r}")


def masked_sparsity(masks: Sequence[WeightMask]) -> float:
    """Fraction of pruned entries over all ``masks`` together."""
    total = sum(m.mask.numel() for m in masks)
    kept = sum(int(m.mask.sum()) for m in masks)
    return 1.0 - kept / total if total else 0.0


def check_sparsities(final_sparsity: Any, initial_sparsity: Any) -> None:
    _check_fraction(final_sparsity, "final_sparsity")
    check(_is_number(initial_sparsity) and 0.0 <= initial_sparsity <= final_sparsity,
          f"pruning.initial_sparsity must be in [0, pruning.final_sparsity={final_sparsity}], got {initial_sparsity!r}")


def check_schedule_and_embeddings(initial_warmup: Any, final_warmup: Any, embedding_sparsity: Any,
                                  embedding_roles: Any) -> None:
    """The options every pruning method shares: warmups of the cubic schedule, magnitude-pruned embeddings."""
    check(_is_number(initial_warmup), f"pruning.initial_warmup must be in [0, 1), got {initial_warmup!r}")
    check(_is_number(final_warmup), f"pruning.final_warmup must be in [0, 1), got {final_warmup!r}")
    check_warmups(initial_warmup, final_warmup, prefix="pruning.")
    if embedding_sparsity is not None:
        _check_fraction(embedding_sparsity, "embedding_sparsity")
    check(isinstance(embedding_roles, Sequence) and not isinstance(embedding_roles, str)
          and len(embedding_roles) > 0 and all(r in EMBEDDING_ROLES for r in embedding_roles),
          f"pruning.embedding_roles must be a non-empty list of {EMBEDDING_ROLES}, got {embedding_roles!r}")


class MagnitudePruning(Method):
    """Prune the smallest |w| of the encoder Linear weights (roles ``attention``, ``ffn``), optionally embeddings.

    ``schedule="oneshot"``: masks computed in ``prepare`` from the weights the model has then
    (after any float fine-tune stage), fixed afterwards. ``schedule="cubic"``: before every
    ``update_every``-th training step (and the last), the masks are recomputed from the current
    weights at the sparsity ``cubic_sparsity`` gives for ``trainer.global_step`` of
    ``trainer.estimated_stepping_batches``. Scores are the weight parameters' |w|, pruned ones
    included (as Sanh et al.'s magnitude pruning): a pruned weight gets no gradient, so it only
    comes back if survivors shrink below it.

    ``scope``: ``per_matrix`` (every matrix at the scheduled sparsity) or ``global`` (one
    threshold over all encoder Linear weights). Embeddings (``embedding_roles``) are pruned per
    matrix to ``embedding_sparsity`` on the same schedule, starting from
    min(initial_sparsity, embedding_sparsity); null leaves them dense.

    The masks are ``WeightMask`` buffers (checkpointed, exported); the schedule is a pure function
    of the step, so a resumed run continues where it stopped.
    """

    def __init__(self, final_sparsity: float = 0.5, initial_sparsity: float = 0.0, schedule: str = "cubic",
                 scope: str = "per_matrix", initial_warmup: float = 0.0, final_warmup: float = 0.1,
                 update_every: int = 1, embedding_sparsity: float | None = None,
                 embedding_roles: Sequence[str] = ("word_embedding",)):
        check_sparsities(final_sparsity, initial_sparsity)
        check(schedule in SCHEDULES, f"pruning.schedule must be one of {SCHEDULES}, got {schedule!r}")
        check(scope in SCOPES, f"pruning.scope must be one of {SCOPES}, got {scope!r}")
        check_schedule_and_embeddings(initial_warmup, final_warmup, embedding_sparsity, embedding_roles)
        check(isinstance(update_every, int) and not isinstance(update_every, bool) and update_every >= 1,
              f"pruning.update_every must be a positive integer, got {update_every!r}")
        self.final_sparsity, self.initial_sparsity = float(final_sparsity), float(initial_sparsity)
        self.schedule, self.scope = schedule, scope
        self.initial_warmup, self.final_warmup = float(initial_warmup), float(final_warmup)
        self.update_every = update_every
        self.embedding_sparsity = None if embedding_sparsity is None else float(embedding_sparsity)
        self.embedding_roles = tuple(str(r) for r in embedding_roles)
        self.encoder: MaskedLayers = {}
        self.embeddings: MaskedLayers = {}

    # -- surgery -----------------------------------------------------------------------------
    def prepare(self, model: nn.Module, edit) -> None:
        self.encoder = self._add_masks(edit, ENCODER_LINEAR_ROLES)
        check(bool(self.encoder), f"{self.label}: the model has no encoder Linear layers ({ENCODER_LINEAR_ROLES})")
        self.embeddings = {}
        if self.embedding_sparsity is not None:
            self.embeddings = self._add_masks(edit, self.embedding_roles)
            check(bool(self.embeddings), f"{self.label}: the model has no layer with roles {self.embedding_roles}")
        if self.schedule == "oneshot" and edit.purpose != "deploy":  # deploy: the stored masks are loaded over them
            self.update_masks(self.final_sparsity, self.embedding_sparsity)

    @staticmethod
    def _add_masks(edit, roles: Sequence[str]) -> MaskedLayers:
        found: MaskedLayers = {}
        for target in edit.targets(*roles):
            weight = target.module.weight
            mask = WeightMask(weight.shape, device=weight.device)
            edit.add_weight_transform(target, mask)
            found[target.name] = (edit.layer(target.name), mask)
        return found

    # -- masks -------------------------------------------------------------------------------
    @torch.no_grad()
    def update_masks(self, sparsity: float, embedding_sparsity: float | None = None) -> None:
        """Recompute the masks from the current weights: encoder per ``scope``, embeddings per matrix."""
        weights = {name: layer.weight for name, (layer, _) in self.encoder.items()}
        for name, keep in magnitude_masks(weights, sparsity, self.scope).items():
            self.encoder[name][1].set_mask(keep)
        if embedding_sparsity is not None and self.embeddings:
            weights = {name: layer.weight for name, (layer, _) in self.embeddings.items()}
            for name, keep in magnitude_masks(weights, embedding_sparsity, "per_matrix").items():
                self.embeddings[name][1].set_mask(keep)

    def scheduled_sparsity(self, step: int, total_steps: int) -> tuple[float, float | None]:
        """(encoder sparsity, embedding sparsity or None) at ``step`` of ``total_steps``."""
        if self.schedule == "oneshot":
            return self.final_sparsity, self.embedding_sparsity
        encoder = cubic_sparsity(step, total_steps, self.initial_sparsity, self.final_sparsity,
                                 self.initial_warmup, self.final_warmup)
        if self.embedding_sparsity is None:
            return encoder, None
        embedding = cubic_sparsity(step, total_steps, min(self.initial_sparsity, self.embedding_sparsity),
                                   self.embedding_sparsity, self.initial_warmup, self.final_warmup)
        return encoder, embedding

    def measured_sparsity(self) -> tuple[float, float | None]:
        """(encoder, embedding or None) sparsity of the masks now."""
        encoder = masked_sparsity([m for _, m in self.encoder.values()])
        embedding = masked_sparsity([m for _, m in self.embeddings.values()]) if self.embeddings else None
        return encoder, embedding

    # -- run hooks ---------------------------------------------------------------------------
    def callbacks(self) -> list:
        return [GradualPruningCallback(self)] if self.schedule == "cubic" else []

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target_sparsity": self.final_sparsity}
        if not self.encoder:
            return out  # never prepared
        return {**out, **sparsity_summary(self.encoder, self.embeddings, self.embedding_sparsity)}


class GradualPruningCallback(SparsityCurve):
    """Before a training step: recompute the masks at the scheduled sparsity; log ``pruning/sparsity`` (and,
    to W&B, the sparsity per layer: ``SparsityCurve``).

    Masks change every ``update_every`` steps and at the last step (so the run ends at the final
    sparsity). Gradient-accumulation micro-batches of one step update once.
    """

    def __init__(self, method: MagnitudePruning):
        super().__init__(lambda: {name: mask for name, (_, mask) in method.encoder.items()})
        self.method = method
        self._updated_at: int | None = None
        self._measured: tuple[float, float | None] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        total = total_training_steps(trainer, "pruning.schedule=cubic")
        step, m = trainer.global_step, self.method
        if step != self._updated_at and (step % m.update_every == 0 or step >= total - 1):
            m.update_masks(*m.scheduled_sparsity(step, total))
            self._updated_at, self._measured = step, None
        if self._measured is None:  # measured once per update (after a resume: from the checkpoint's masks)
            self._measured = m.measured_sparsity()
        log_sparsity(pl_module, *self._measured)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


def sparsity_summary(encoder: MaskedLayers, embeddings: MaskedLayers, embedding_target: float | None) -> dict[str, Any]:
    """Achieved sparsity: of the encoder Linear weights together, of the embeddings, and per module."""
    out: dict[str, Any] = {"sparsity": masked_sparsity([m for _, m in encoder.values()])}
    if embeddings:
        out["embedding_sparsity"] = masked_sparsity([m for _, m in embeddings.values()])
        out["target_embedding_sparsity"] = embedding_target
    for name, (_, mask) in {**encoder, **embeddings}.items():
        out[f"sparsity/{name}"] = mask.sparsity()
    return out


def total_training_steps(trainer, option: str) -> int:
    """The run's optimizer steps, which a schedule needs to be finite (one line naming ``option`` otherwise)."""
    total = trainer.estimated_stepping_batches
    check(math.isfinite(total) and total >= 1,
          f"{option} needs a finite number of training steps (trainer.max_steps or max_epochs), got {total}")
    return int(total)


def log_sparsity(pl_module, encoder: float, embedding: float | None) -> None:
    pl_module.log("pruning/sparsity", encoder, on_step=True, on_epoch=False, batch_size=1)
    if embedding is not None:
        pl_module.log("pruning/embedding_sparsity", embedding, on_step=True, on_epoch=False, batch_size=1)
