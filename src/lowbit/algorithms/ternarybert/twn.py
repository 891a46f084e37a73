"""TernaryBERT weight ternarization (TWN) and its quantizer recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lowbit.errors import check
from lowbit.quant import functional as Fq
from lowbit.quant.granularity import Granularity, PerTensor, make_granularity
from lowbit.quant.quantizers import WEIGHT_QUANTIZERS, UniformWeightQuantizer, WeightQuantizer
from lowbit.quant.recipes import ActivationSpec, QuantRecipe, _activation
from lowbit.quant.targets import Target


def twn_threshold_alpha(grouped: torch.Tensor, threshold_factor: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN per group: Δ = 0.7·mean|W|, α = mean of |W| over entries with |W| > Δ."""
    a = grouped.detach().abs()
    delta = threshold_factor * a.mean(dim=1, keepdim=True)
    mask = a > delta
    alpha = (a * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp_min(1)
    return delta, alpha


def ternarize(grouped: torch.Tensor, delta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """α·sign(W)·[|W| > Δ] forward, identity backward."""
    w = grouped.detach()
    return Fq.ste(grouped, alpha * torch.sign(w) * (w.abs() > delta))


def ternary_storage_bits(numel: int, n_ranges: int) -> int:
    """Ternary weights as lowbit stores them: 5 trits per byte (1.6 bits each) + one fp32 α per range."""
    return (numel + 4) // 5 * 8 + n_ranges * 32


@WEIGHT_QUANTIZERS.register("ternary_twn")
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

    def quantize(self, grouped: torch.Tensor) -> torch.Tensor:
        clipped = Fq.clip_ste(grouped, self.clip)
        delta, alpha = twn_threshold_alpha(clipped, self.threshold_factor)
        return ternarize(clipped, delta, alpha)

    def num_levels(self) -> int:
        return 3

    def storage_bits(self, weight: torch.Tensor) -> int:
        return ternary_storage_bits(weight.numel(), self.granularity.groups(weight))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip={self.clip}, threshold_factor={self.threshold_factor}"


@dataclass
class TernaryRecipe(QuantRecipe):
    """TernaryBERT: TWN at 2 bits, symmetric uniform above (the official code's SymQuantizer).

    Linear weights get one α per matrix; the word embedding one α per row.
    """

    clip: float | None = 2.5
    threshold_factor: float = 0.7
    word_embedding_granularity: str = "per_row"
    #: "twn" (TernaryBERT-TWN) or "lat" (loss-aware, curvature from Adam's second moment)
    ternarizer: str = "twn"
    lat_iterations: int = 5
    lat_solver: str = "alternating"
    activation: ActivationSpec | dict | None = field(default_factory=ActivationSpec)

    def __post_init__(self):
        self.activation = _activation(self.activation)
        check(self.word_embedding_granularity in ("per_tensor", "per_row"),
              f"quantizer.word_embedding_granularity must be per_tensor or per_row, "
              f"got {self.word_embedding_granularity!r}")
        check(self.ternarizer in ("twn", "lat"), f"quantizer.ternarizer must be twn or lat, got {self.ternarizer!r}")
        self.ternary_quantizer(PerTensor())  # validates clip / threshold / iterations

    def granularity_for(self, target: Target) -> Granularity:
        return make_granularity(self.word_embedding_granularity if target.role == "word_embedding" else "per_tensor")

    def ternary_quantizer(self, granularity: Granularity) -> WeightQuantizer:
        if self.ternarizer == "lat":
            from lowbit.algorithms.ternarybert.lat import TernaryLATQuantizer

            return TernaryLATQuantizer(granularity, self.clip, self.threshold_factor, self.lat_iterations,
                                       self.lat_solver)
        return TernaryTWNQuantizer(granularity, clip=self.clip, threshold_factor=self.threshold_factor)

    def callbacks(self) -> list:
        if self.ternarizer != "lat":
            return []
        from lowbit.algorithms.ternarybert.lat import AdamCurvatureCallback

        return [AdamCurvatureCallback()]

    def weight_quantizer(self, target: Target, bits: int) -> WeightQuantizer:
        granularity = self.granularity_for(target)
        if bits == 2:
            return self.ternary_quantizer(granularity)
        return UniformWeightQuantizer(bits, symmetric=True, granularity=granularity)
