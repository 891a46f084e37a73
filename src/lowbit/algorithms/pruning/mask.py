"""The keep-mask of unstructured pruning, as a weight transform of a lowbit layer's chain (fixed or learned)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from lowbit.algorithms.pruning.functional import init_scores, straight_through
from lowbit.errors import check
from lowbit.layers import WeightTransform


class WeightMask(WeightTransform):
    """``weight * mask`` with a persistent bool buffer ``mask`` (weight-shaped, all True at start).

    Runs before any quantizer (``chain_order`` 10 < 50), so the surviving weights are the ones
    quantized and the quantizer's statistics see the mask. Pruned weights get zero gradient
    through the product. The mask lives in a buffer so it is checkpointed, moved to the device,
    counted by ``lowbit.size`` (bitmap or CSR, ``packed_buffers``) and packed by ``lowbit.export``.
    Set it with ``set_mask`` (in place: the buffer object is never replaced).
    """

    kind: ClassVar[str] = "mask"
    chain_order: ClassVar[int] = 10
    packed_buffers: ClassVar[tuple[str, ...]] = ("mask",)

    mask: torch.Tensor

    def __init__(self, shape: torch.Size | tuple[int, ...], device: torch.device | str | None = None):
        super().__init__()
        self.register_buffer("mask", torch.ones(tuple(shape), dtype=torch.bool, device=device), persistent=True)

    @property
    def row_separable(self) -> bool:
        return True  # row i of (w * mask) is w[i] * mask[i]

    def validate(self, weight: torch.Tensor, name: str) -> None:
        check(tuple(weight.shape) == tuple(self.mask.shape),
              f"{name}: pruning mask of shape {tuple(self.mask.shape)} for a weight of shape {tuple(weight.shape)}")

    def forward(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return weight * self.mask

    def forward_rows(self, rows: torch.Tensor, row_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return rows * self.mask[row_ids]

    def cache_key(self) -> tuple:
        # set_mask bumps the version: cached effective weights are recomputed after a mask update
        return (self.mask._version, self.mask.data_ptr())

    @torch.no_grad()
    def set_mask(self, keep: torch.Tensor) -> None:
        """Copy ``keep`` (True = weight survives) into the buffer, in place."""
        check(tuple(keep.shape) == tuple(self.mask.shape),
              f"pruning mask update of shape {tuple(keep.shape)} for a mask of shape {tuple(self.mask.shape)}")
        self.mask.copy_(keep)

    def sparsity(self) -> float:
        """Fraction of pruned entries."""
        return 1.0 - float(self.mask.sum()) / max(1, self.mask.numel())

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mask.shape)}"


class ScoredMask(WeightMask):
    """A ``WeightMask`` learned from importance scores (movement pruning): ``scores`` is a weight-shaped Parameter.

    The method writes the keep-mask of the current scores into the ``mask`` buffer before every
    training step (top-k or σ-threshold: it may depend on every matrix's scores, ``scope=global``);
    in a forward with gradients the mask enters as ``straight_through(scores, mask)``, so the
    value is ``w * mask`` and the scores receive ``w · ∂L/∂(w * mask)`` (Sanh et al.'s binarizers'
    backward). Without gradients (evaluation, the eval cache) it is a plain ``WeightMask``.

    ``bake()`` keeps the mask and empties ``scores`` in place (``numel() == 0``): inference needs
    only the mask, the size report and the export count 0 bits for the scores, and the Parameter
    object stays in the optimizer's groups, so a baked checkpoint resumes with the same groups.
    Loading a baked checkpoint bakes this mask; loading a training checkpoint into a baked mask
    (a ``deploy`` build) keeps the mask buffer it ran with and drops its scores.
    """

    def __init__(self, shape: torch.Size | tuple[int, ...], init: str = "constant", init_scale: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, baked: bool = False):
        super().__init__(shape, device=device)
        self.scores = nn.Parameter(torch.empty(0 if baked else tuple(shape), device=device, dtype=dtype))
        if not baked:
            init_scores(self.scores, init, init_scale)

    @property
    def baked(self) -> bool:
        return self.scores.numel() == 0

    @property
    def row_separable(self) -> bool:
        return self.baked  # the straight-through path needs the whole scores tensor

    def forward(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.baked and torch.is_grad_enabled() and self.scores.requires_grad:
            return weight * straight_through(self.scores, self.mask)
        return weight * self.mask

    @torch.no_grad()
    def bake(self) -> None:
        """Keep the mask the model runs with; empty the scores in place (same Parameter object)."""
        if not self.baked:
            self.scores.data = self.scores.data.new_empty(0)
            self.scores.grad = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "scores"
        incoming = state_dict.get(key)
        if incoming is not None:
            if incoming.numel() == 0:
                self.bake()  # a baked checkpoint: its mask buffer is final
            elif self.baked:  # a training checkpoint into a baked (deploy) build: the mask it ran with, no scores
                state_dict[key] = incoming.new_empty(0)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mask.shape)}, baked={self.baked}"
