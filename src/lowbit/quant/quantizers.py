"""Weight and activation fake-quantizers as small ``nn.Module`` s.

A weight quantizer maps a float weight to its fake-quantized value and knows how
many bits that weight costs to store (``storage_bits``), which is what
``lowbit.quant.size`` adds up. Quantizer kinds live in ``WEIGHT_QUANTIZERS`` so a
method adds a kind by registering it, never by extending an isinstance chain.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import check
from lowbit.quant import functional as Fq
from lowbit.quant.granularity import Granularity, PerTensor
from lowbit.registry import Registry

WEIGHT_QUANTIZERS: Registry[type["WeightQuantizer"]] = Registry("weight quantizer")

FLOAT_BITS = 32  # storage of a scale, an alpha, or an unquantized parameter


class WeightQuantizer(nn.Module):
    """Base class. Subclasses set ``bits`` and implement ``quantize``."""

    bits: int
    granularity: Granularity = PerTensor()
    #: bits stored per range (scale, or scale + zero point)
    range_bits: int = FLOAT_BITS

    @property
    def row_separable(self) -> bool:
        """Quantizing any subset of rows equals slicing the quantized tensor."""
        return self.granularity.row_separable

    def validate(self, weight: torch.Tensor, name: str) -> None:
        self.granularity.validate(weight.shape, name)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        grouped = self.granularity.to_groups(weight)
        return self.granularity.from_groups(self.quantize(grouped), weight.shape)

    def quantize(self, grouped: torch.Tensor) -> torch.Tensor:  # [G, N] -> [G, N]
        raise NotImplementedError

    def forward_rows(self, rows: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
        """Quantize rows ``row_ids`` of the weight (row-separable quantizers only); ``rows`` is [n, dim]."""
        return self(rows)

    def num_levels(self) -> int:
        return 2**self.bits

    def storage_bits(self, weight: torch.Tensor) -> int:
        return weight.numel() * self.bits + self.granularity.groups(weight) * self.range_bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity}"


@WEIGHT_QUANTIZERS.register("uniform")
class UniformWeightQuantizer(WeightQuantizer):
    """k-bit uniform quantization; symmetric (max|w|) or asymmetric (min/max, Q-BERT)."""

    def __init__(self, bits: int, symmetric: bool = False, granularity: Granularity = PerTensor()):
        super().__init__()
        Fq.check_bits(bits, "weight bits")
        self.bits, self.symmetric, self.granularity = bits, symmetric, granularity
        # asymmetric stores a zero point (bits wide) beside each fp32 scale
        self.range_bits = FLOAT_BITS if symmetric else FLOAT_BITS + bits

    def quantize(self, grouped: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return Fq.fake_quant_symmetric(grouped, self.bits)
        return Fq.fake_quant_asymmetric(grouped, self.bits)

    def num_levels(self) -> int:
        return 2**self.bits - 1 if self.symmetric else 2**self.bits

    def extra_repr(self) -> str:
        return super().extra_repr() + f", symmetric={self.symmetric}"


class ActivationQuantizer(nn.Module):
    """k-bit activation fake-quant.

    ``mode="dynamic"``: range from this forward's max|x| after clamping to ±clip
    (TernaryBERT). ``mode="ema"``: static range tracked by an exponential moving
    average of the batch min/max during training (Q-BERT momentum 0.99, I-BERT 0.95),
    frozen in eval.
    """

    def __init__(self, bits: int = 8, symmetric: bool = True, mode: str = "dynamic",
                 clip: float | None = 2.5, momentum: float = 0.99):
        super().__init__()
        Fq.check_bits(bits, "quantizer.activation.bits", low=2, high=16)
        check(mode in ("dynamic", "ema"), f"quantizer.activation.mode must be 'dynamic' or 'ema', got {mode!r}")
        check(clip is None or clip > 0, f"quantizer.activation.clip must be positive or null, got {clip!r}")
        check(0.0 <= momentum < 1.0, f"quantizer.activation.momentum must be in [0, 1), got {momentum!r}")
        self.bits, self.symmetric, self.mode, self.clip, self.momentum = bits, symmetric, mode, clip, momentum
        if mode == "ema":
            self.register_buffer("running_min", torch.zeros(()))
            self.register_buffer("running_max", torch.zeros(()))
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _ema_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            lo, hi = x.detach().amin(), x.detach().amax()
            if not bool(self.initialized):
                self.running_min.copy_(lo), self.running_max.copy_(hi), self.initialized.fill_(True)
            else:
                self.running_min.lerp_(lo, 1 - self.momentum)
                self.running_max.lerp_(hi, 1 - self.momentum)
        return self.running_min, self.running_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(1, -1)
        if self.mode == "dynamic":
            if self.symmetric:  # clip folded into the scale: one fused kernel, clipped STE
                return Fq.fake_quant_symmetric(flat, self.bits, clip=self.clip).reshape(x.shape)
            return Fq.fake_quant_asymmetric(Fq.clip_ste(flat, self.clip), self.bits).reshape(x.shape)
        lo, hi = self._ema_range(Fq.clip_ste(x, self.clip))
        if self.symmetric:
            scale = torch.maximum(lo.abs(), hi.abs()).clamp_min(1e-8) / (2 ** (self.bits - 1) - 1)
            return Fq.fake_quant_symmetric(flat, self.bits, scale=scale).reshape(x.shape)
        lo_, hi_ = lo.clamp(max=0.0), hi.clamp(min=0.0)
        scale = ((hi_ - lo_) / (2**self.bits - 1)).clamp_min(1e-8)
        zero_point = torch.round(-lo_ / scale)
        # values outside the static range saturate, and the fused kernel cuts their gradient
        return Fq.fake_quant_asymmetric(flat, self.bits, params=(scale, zero_point)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, mode={self.mode}, clip={self.clip}"
