"""TernaryBERT weight ternarization (TWN)."""

from __future__ import annotations

import torch

from lowbit.errors import check
from lowbit.quant import functional as Fq
from lowbit.quant.granularity import Granularity, PerTensor
from lowbit.quant.quantizers import QParams, WeightQuantizer


def twn_threshold_alpha(grouped: torch.Tensor, threshold_factor: float = 0.7,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN per group: Δ = 0.7·mean|W|, α = mean of |W| over entries with |W| > Δ.

    With a pruning ``mask`` the mean runs over the surviving weights only (pruned zeros would
    otherwise pull Δ down).
    """
    a = grouped.detach().abs()
    if mask is None:
        delta = threshold_factor * a.mean(dim=1, keepdim=True)
    else:
        keep = mask.to(a.dtype)
        delta = threshold_factor * (a * keep).sum(dim=1, keepdim=True) / keep.sum(dim=1, keepdim=True).clamp_min(1)
    kept = a > delta
    alpha = (a * kept).sum(dim=1, keepdim=True) / kept.sum(dim=1, keepdim=True).clamp_min(1)
    return delta, alpha


def ternarize(grouped: torch.Tensor, delta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """α·sign(W)·[|W| > Δ] forward, identity backward."""
    w = grouped.detach()
    return Fq.ste(grouped, alpha * torch.sign(w) * (w.abs() > delta))


class TernaryTWNQuantizer(WeightQuantizer):
    """Ternary weight networks as in TernaryBERT: w_q = α·sign(W)·[|W| > Δ].

    Δ = threshold_factor·mean|W| (0.7), α = mean |W| over the kept entries, both per
    range (per matrix, or per row for word embeddings). Weights are clipped to ±clip
    first and the STE gradient is zero outside the clip.
    """

    bits = 2

    def __init__(self, granularity: Granularity = PerTensor(), clip: float | None = 2.5,
                 threshold_factor: float = 0.7):
        super().__init__()
        check(clip is None or clip > 0, f"quantizer.clip must be positive or null, got {clip!r}")
        check(0 < threshold_factor < 2, f"quantizer.threshold_factor must be in (0, 2), got {threshold_factor!r}")
        self.granularity, self.clip, self.threshold_factor = granularity, clip, threshold_factor

    def threshold_alpha(self, grouped: torch.Tensor, mask: torch.Tensor | None,
                        curvature: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return twn_threshold_alpha(grouped, self.threshold_factor, mask)

    def quantize(self, grouped: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        clipped = Fq.clip_ste(grouped, self.clip)
        delta, alpha = self.threshold_alpha(clipped, mask)
        return ternarize(clipped, delta, alpha)

    def qparams(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> QParams:
        g = self.granularity
        grouped = g.to_groups(weight.detach())
        if self.clip is not None:
            grouped = grouped.clamp(-self.clip, self.clip)
        delta, alpha = self.threshold_alpha(grouped, None if mask is None else g.to_groups(mask),
                                            self._grouped_curvature(g))
        return QParams("ternary", 2, g, alpha.reshape(-1), threshold=delta.reshape(-1))

    def _grouped_curvature(self, g: Granularity) -> torch.Tensor | None:
        return None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip={self.clip}, threshold_factor={self.threshold_factor}"
