"""Fake-quantization primitives shared by every lowbit method."""

from lowbit.quant.bit_assignment import PerModuleBits, uniform_bits
from lowbit.quant.granularity import Group, PerRow, PerTensor, make_granularity
from lowbit.quant.layers import QuantEmbedding, QuantLinear
from lowbit.quant.quantizers import (WEIGHT_QUANTIZERS, ActivationQuantizer,
                                     UniformWeightQuantizer, WeightQuantizer)
from lowbit.quant.recipes import ActivationSpec, NoQuantization, QuantRecipe, UniformRecipe
from lowbit.quant.size import SizeReport, model_size_bits, size_report
from lowbit.quant.surgery import QUANT_LAYERS, QuantizationReport, convert_, quantize_

__all__ = [
    "ActivationQuantizer", "ActivationSpec", "Group", "NoQuantization", "PerModuleBits", "PerRow", "PerTensor",
    "QUANT_LAYERS", "QuantEmbedding", "QuantLinear", "QuantRecipe", "QuantizationReport", "SizeReport",
    "UniformRecipe", "UniformWeightQuantizer", "WEIGHT_QUANTIZERS",
    "WeightQuantizer", "convert_", "make_granularity", "model_size_bits", "quantize_", "size_report",
    "uniform_bits",
]
