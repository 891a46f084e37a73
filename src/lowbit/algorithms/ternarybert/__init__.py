"""TernaryBERT (Zhang et al., EMNLP 2020): ternary weights (TWN / LAT), 8-bit activations, distillation."""

from lowbit.algorithms.ternarybert.lat import (
                                               AdamCurvatureCallback,
                                               TernaryLATQuantizer,
                                               lat_exact_threshold_alpha,
                                               lat_threshold_alpha,
)
from lowbit.algorithms.ternarybert.recipe import TernaryRecipe
from lowbit.algorithms.ternarybert.twn import TernaryTWNQuantizer, ternarize, twn_threshold_alpha

__all__ = ["AdamCurvatureCallback", "TernaryLATQuantizer", "TernaryRecipe", "TernaryTWNQuantizer",
           "lat_exact_threshold_alpha", "lat_threshold_alpha", "ternarize", "twn_threshold_alpha"]
