"""Model size as stored: each parameter counted under its quantizer.

A quantized weight costs ``numel·bits`` plus its ranges (fp32 scales, zero points);
everything else (biases, LayerNorm, the float classifier, float embeddings) costs
32 bits per element. Shared parameters are counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from lowbit.quant.quantizers import FLOAT_BITS


@dataclass
class SizeReport:
    total_bits: int
    fp32_bits: int
    by_module: dict[str, int] = field(default_factory=dict)

    @property
    def megabytes(self) -> float:
        return self.total_bits / 8 / 1e6

    @property
    def compression_ratio(self) -> float:
        return self.fp32_bits / self.total_bits


def size_report(model: nn.Module) -> SizeReport:
    seen: set[int] = set()
    total = fp32 = 0
    by_module: dict[str, int] = {}
    for mod_name, module in model.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        for p_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            bits = (quantizer.storage_bits(param) if quantizer is not None and p_name == "weight"
                    else param.numel() * FLOAT_BITS)
            total += bits
            fp32 += param.numel() * FLOAT_BITS
            by_module[mod_name] = by_module.get(mod_name, 0) + bits
    return SizeReport(total, fp32, by_module)


def model_size_bits(model: nn.Module) -> int:
    """Total storage of the model's parameters in bits, under their quantizers."""
    return size_report(model).total_bits
