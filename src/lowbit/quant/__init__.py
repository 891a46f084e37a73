"""Fake quantization: quantizers, recipes (the ``quantizer`` group), bit assignment, ``quantize_``."""

from lowbit.quant.bit_assignment import BitAssignment, LayerwiseBits, PerModuleBits, uniform_bits
from lowbit.quant.granularity import Group, PerRow, PerTensor, make_granularity
from lowbit.quant.quantizers import ActivationQuantizer, QParams, UniformWeightQuantizer, WeightQuantizer
from lowbit.quant.recipes import ActivationSpec, NoQuantization, QuantizationReport, QuantRecipe, UniformRecipe
from lowbit.quant.surgery import convert_, quantize_
from lowbit.size import SizeReport, model_size_bits, size_report

__all__ = [
    "ActivationQuantizer", "ActivationSpec", "BitAssignment", "Group", "LayerwiseBits", "NoQuantization",
    "PerModuleBits", "PerRow", "PerTensor", "QParams", "QuantRecipe", "QuantizationReport", "SizeReport",
    "UniformRecipe", "UniformWeightQuantizer", "WeightQuantizer", "convert_", "make_granularity", "model_size_bits",
    "quantize_", "size_report", "uniform_bits",
]
