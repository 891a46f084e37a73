"""AdaptivFloat weight and activation fake-quantizers, and their ``QParams``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.algorithms.adaptivfloat import functional as AF
from lowbit.errors import check
from lowbit.quant import functional as Fq
from lowbit.quant.granularity import Granularity, PerTensor
from lowbit.quant.quantizers import QParams, WeightQuantizer, packed_bits

#: how a range is stored: its exponent bias as an int16 (any float32 tensor's bias fits)
EXP_BIAS_DTYPE = torch.int16
EXP_BIAS_BITS = torch.iinfo(EXP_BIAS_DTYPE).bits


@dataclass
class AdaptivFloatQParams(QParams):
    """``kind="adaptivfloat"``: codes ``s·2^(n-1) + E·2^m + M`` in [0, 2^n - 1] (0 = zero), one ``exp_bias`` per range.

    ``scale`` is 2^exp_bias (the unit of the lowest binade), for code that only reads a magnitude."""

    exp_bits: int = 3
    exp_bias: torch.Tensor | None = None  # [G] int64

    @property
    def qmin(self) -> int:
        return 0

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @property
    def n_ranges(self) -> int:
        return int(self.exp_bias.numel())

    def codes(self, quantized: torch.Tensor) -> torch.Tensor:
        g = self.granularity
        codes = AF.encode(g.to_groups(quantized.detach()), self.bits, self.exp_bits, self.exp_bias)
        return g.from_groups(codes, quantized.shape)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        g = self.granularity
        return g.from_groups(AF.decode(g.to_groups(codes), self.bits, self.exp_bits, self.exp_bias), codes.shape)

    def code_bits(self, n: int) -> int:
        return packed_bits(n, self.bits)

    def range_bits(self) -> int:
        return self.n_ranges * EXP_BIAS_BITS


def adaptivfloat_qparams(bits: int, exp_bits: int, granularity: Granularity,
                         exp_bias: torch.Tensor) -> AdaptivFloatQParams:
    bias = exp_bias.reshape(-1).long()
    return AdaptivFloatQParams("adaptivfloat", bits, granularity, AF.pow2(bias), exp_bits=exp_bits, exp_bias=bias)


class AdaptivFloatWeightQuantizer(WeightQuantizer):
    """n-bit AdaptivFloat weights, the exponent bias per range (per tensor by default) from its max |w|.

    With a pruning mask the max runs over the masked weight (pruned entries are 0, and 0 stays 0).
    Straight-through gradient."""

    def __init__(self, bits: int = 8, exp_bits: int = 3, granularity: Granularity | None = None):
        super().__init__()
        AF.check_format(bits, exp_bits, "weight bits", "quantizer.exp_bits")
        self.bits, self.exp_bits, self.granularity = bits, exp_bits, granularity or PerTensor()

    def quantize(self, grouped: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return AF.fake_quant_adaptivfloat(grouped, self.bits, self.exp_bits)

    def qparams(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> AdaptivFloatQParams:
        grouped = self.granularity.to_groups(weight.detach())
        return adaptivfloat_qparams(self.bits, self.exp_bits, self.granularity,
                                    AF.exponent_bias(Fq.abs_max(grouped), self.exp_bits))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", exp_bits={self.exp_bits}"


class AdaptivFloatActivationQuantizer(nn.Module):
    """n-bit AdaptivFloat activations, the exponent bias from this forward's max |x| (after an optional ±clip).

    Computed in float32, returned in the input's dtype; gradient straight through (zero beyond the clip)."""

    def __init__(self, bits: int = 8, exp_bits: int = 3, clip: float | None = None):
        super().__init__()
        AF.check_format(bits, exp_bits, "quantizer.activation.bits", "quantizer.activation.exp_bits")
        check(clip is None or clip > 0, f"quantizer.activation.clip must be positive or null, got {clip!r}")
        self.bits, self.exp_bits, self.clip = bits, exp_bits, clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = Fq.clip_ste(x.reshape(1, -1), self.clip)
        return Fq.ste(flat, AF.quantize_grouped(flat, self.bits, self.exp_bits)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, exp_bits={self.exp_bits}, clip={self.clip}"
