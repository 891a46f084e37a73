"""The keep-mask of unstructured pruning, as a weight transform of a lowbit layer's chain."""

from __future__ import annotations

from typing import ClassVar

import torch

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
