"""The ``ternary_twn`` / ``ternary_lat`` quantizer options: TernaryBERT's recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from lowbit.algorithms.ternarybert.lat import AdamCurvatureCallback, TernaryLATQuantizer
from lowbit.algorithms.ternarybert.twn import TernaryTWNQuantizer
from lowbit.errors import check
from lowbit.quant.granularity import Granularity, PerTensor, make_granularity
from lowbit.quant.quantizers import UniformWeightQuantizer, WeightQuantizer
from lowbit.quant.recipes import ActivationSpec, QuantRecipe, as_activation_spec
from lowbit.roles import Target


@dataclass
class TernaryRecipe(QuantRecipe):
    """TernaryBERT: TWN at 2 bits, symmetric uniform clipped to ±clip above (the official code's SymQuantizer).

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
        self.activation = as_activation_spec(self.activation)
        check(self.word_embedding_granularity in ("per_tensor", "per_row"),
              f"quantizer.word_embedding_granularity must be per_tensor or per_row, "
              f"got {self.word_embedding_granularity!r}")
        check(self.ternarizer in ("twn", "lat"), f"quantizer.ternarizer must be twn or lat, got {self.ternarizer!r}")
        self.ternary_quantizer(PerTensor())  # validates clip / threshold / iterations

    def granularity_for(self, target: Target) -> Granularity:
        return make_granularity(self.word_embedding_granularity if target.role == "word_embedding" else "per_tensor")

    def ternary_quantizer(self, granularity: Granularity) -> WeightQuantizer:
        if self.ternarizer == "lat":
            return TernaryLATQuantizer(granularity, self.clip, self.threshold_factor, self.lat_iterations,
                                       self.lat_solver)
        return TernaryTWNQuantizer(granularity, clip=self.clip, threshold_factor=self.threshold_factor)

    def check_ready(self, run) -> None:
        if self.ternarizer == "lat":
            check("adam" in run.optimizer.lower(),
                  f"quantizer=ternary_lat reads Adam's second moment: optim.optimizer must be Adam-family, "
                  f"got {run.optimizer!r}")

    def callbacks(self) -> list:
        return [AdamCurvatureCallback()] if self.ternarizer == "lat" else []

    def weight_quantizer(self, target: Target, bits: int) -> WeightQuantizer:
        granularity = self.granularity_for(target)
        if bits == 2:
            return self.ternary_quantizer(granularity)
        return UniformWeightQuantizer(bits, symmetric=True, granularity=granularity, clip=self.clip)
