"""lowbit: ultra-low-bit BERT compression (Q-BERT, I-BERT, EdgeBERT, TernaryBERT) in one framework."""

from lowbit.quant import (ActivationSpec, PerModuleBits, UniformRecipe, convert_, model_size_bits, quantize_,
                          size_report, uniform_bits)

from lowbit.export import export_packed, load_packed  # noqa: E402

__version__ = "0.1.0"
__all__ = ["export_packed", "load_packed", "ActivationSpec", "PerModuleBits", "UniformRecipe", "convert_", "model_size_bits", "quantize_",
           "size_report", "uniform_bits"]
