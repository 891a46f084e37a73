"""TernaryBERT (Zhang et al., EMNLP 2020): ternary weights, 8-bit activations, distillation."""

from lowbit.algorithms.ternarybert.twn import TernaryRecipe, TernaryTWNQuantizer, ternarize, twn_threshold_alpha

__all__ = ["TernaryRecipe", "TernaryTWNQuantizer", "ternarize", "twn_threshold_alpha"]
