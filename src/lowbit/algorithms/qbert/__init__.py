"""Q-BERT (Shen et al., AAAI 2020): group-wise ranges, Hessian-based mixed precision.

DirectQ uses ``lowbit.quant.UniformRecipe``; the Hessian spectrum is ``lowbit.hessian``.
"""

from lowbit.algorithms.qbert.bit_assignment import HessianBits, PerLayerBits, assign_layer_bits
from lowbit.algorithms.qbert.groupwise import GroupwiseRecipe

__all__ = ["GroupwiseRecipe", "HessianBits", "PerLayerBits", "assign_layer_bits"]
