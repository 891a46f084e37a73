"""I-BERT (Kim et al., ICML 2021): integer-only GELU, softmax and LayerNorm, I-BERT quantization.

``integer``: the integer kernels (functional API, tested bit-exact against transformers' I-BERT
``quant_modules``); ``approximation``: the ``approximation`` group's modules and method;
``recipe``: ``quantizer=ibert``.
"""

from lowbit.algorithms.ibert.approximation import (
                                                   FloatGELUApproximation,
                                                   IntegerApproximation,
                                                   IntGELU,
                                                   IntLayerNorm,
                                                   IntSoftmax,
                                                   StaticScale,
)
from lowbit.algorithms.ibert.recipe import FixedScaleQuantizer, IBertRecipe, IntBias

__all__ = ["FixedScaleQuantizer", "FloatGELUApproximation", "IBertRecipe", "IntBias", "IntGELU", "IntLayerNorm",
           "IntSoftmax", "IntegerApproximation", "StaticScale"]
