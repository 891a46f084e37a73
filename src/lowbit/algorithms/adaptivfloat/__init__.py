"""AdaptivFloat (Tambe et al., DAC 2020): n-bit floating point with a per-tensor exponent bias (EdgeBERT's weights).

``functional``: the format (values, rounding, codes); ``quantizer``: weight / activation fake-quantizers and
their ``QParams``; ``recipe``: ``quantizer=adaptivfloat``.
"""

from lowbit.algorithms.adaptivfloat.functional import (
                                                       adaptivfloat_quantize,
                                                       adaptivfloat_values,
                                                       decode,
                                                       encode,
                                                       exponent_bias,
                                                       fake_quant_adaptivfloat,
)
from lowbit.algorithms.adaptivfloat.quantizer import (
                                                      AdaptivFloatActivationQuantizer,
                                                      AdaptivFloatQParams,
                                                      AdaptivFloatWeightQuantizer,
                                                      adaptivfloat_qparams,
)
from lowbit.algorithms.adaptivfloat.recipe import AdaptivFloatActivationSpec, AdaptivFloatRecipe

__all__ = ["AdaptivFloatActivationQuantizer", "AdaptivFloatActivationSpec", "AdaptivFloatQParams",
           "AdaptivFloatRecipe", "AdaptivFloatWeightQuantizer", "adaptivfloat_qparams", "adaptivfloat_quantize",
           "adaptivfloat_values", "decode", "encode", "exponent_bias", "fake_quant_adaptivfloat"]
