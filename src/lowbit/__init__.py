"""lowbit: ultra-low-bit BERT compression (Q-BERT, I-BERT, EdgeBERT, TernaryBERT) in one framework."""

from lowbit.builder import build_methods, build_model, prepare_model
from lowbit.edit import ModelEditor
from lowbit.export import export_packed, load_packed
from lowbit.layers import LowbitEmbedding, LowbitLinear, WeightTransform, lowbit_layers
from lowbit.methods import Method, ParamGroup, Stage
from lowbit.quant import (
                          ActivationSpec,
                          BitAssignment,
                          PerModuleBits,
                          UniformRecipe,
                          convert_,
                          model_size_bits,
                          quantize_,
                          size_report,
                          uniform_bits,
)

__version__ = "0.2.0"
__all__ = ["ActivationSpec", "BitAssignment", "LowbitEmbedding", "LowbitLinear", "Method", "ModelEditor", "ParamGroup",
           "PerModuleBits", "Stage", "UniformRecipe", "WeightTransform", "build_methods", "build_model", "convert_",
           "export_packed", "load_packed", "lowbit_layers", "model_size_bits", "prepare_model", "quantize_",
           "size_report", "uniform_bits"]
