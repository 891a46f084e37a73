"""Weight and activation fake-quantizers as small ``nn.Module`` s.

A weight quantizer is a ``WeightTransform`` of kind ``quantizer``: it maps a float weight to its
fake-quantized value, and ``qparams(weight)`` returns its quantization parameters (kind, bits,
granularity, scale, zero point, ternary threshold) as one ``QParams``. Export, size accounting,
LAT and the Hessian code ask ``qparams`` instead of re-deriving them, and ``QParams`` says how
many bits its codes and ranges take when stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.codes import attach, requantized
from lowbit.errors import check
from lowbit.layers import WeightTransform
from lowbit.quant import functional as Fq
from lowbit.quant.granularity import Granularity, PerTensor

FLOAT_BITS = 32  # storage of a scale, an alpha, or an unquantized parameter


def packed_bits(n: int, bits: int) -> int:
    """Bits of ``n`` codes of ``bits`` each packed as a byte stream (whole bytes, as stored)."""
    return math.ceil(n * bits / 8) * 8


def trit_bits(n: int) -> int:
    """Bits of ``n`` ternary codes at 5 trits per byte (3^5 = 243 <= 256): 1.6 bits each."""
    return (n + 4) // 5 * 8


@dataclass
class QParams:
    """Quantization parameters of one weight: codes = round(w·(1/scale) + zero_point), per range.

    ``kind``: ``uniform`` (symmetric codes in [-(2^(b-1)-1), 2^(b-1)-1], or asymmetric in
    [0, 2^b - 1] with ``zero_point``) or ``ternary`` (codes in {-1, 0, +1}, ``scale`` = α,
    ``threshold`` = Δ). Tensors are per range ([G]) of ``granularity``.
    """

    kind: str
    bits: int
    granularity: Granularity
    scale: torch.Tensor
    zero_point: torch.Tensor | None = None
    threshold: torch.Tensor | None = None

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    @property
    def qmin(self) -> int:
        if self.kind == "ternary":
            return -1
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        if self.kind == "ternary":
            return 1
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def n_ranges(self) -> int:
        return int(self.scale.numel())

    def codes(self, quantized: torch.Tensor) -> torch.Tensor:
        """Integer codes (int64, weight-shaped) of a weight already on this grid."""
        g = self.granularity
        grouped = g.to_groups(quantized.detach())
        if self.kind == "ternary":
            codes = torch.sign(grouped)
        else:
            inv = self.scale.reshape(-1, 1).reciprocal()
            codes = grouped * inv if self.zero_point is None else torch.addcmul(self.zero_point.reshape(-1, 1),
                                                                                 grouped, inv)
            codes = torch.round(codes)
        return g.from_groups(codes, quantized.shape).to(torch.int64)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        g = self.granularity
        grouped = g.to_groups(codes.to(torch.float32))
        if self.zero_point is not None:
            grouped = grouped - self.zero_point.reshape(-1, 1)
        return g.from_groups(grouped * self.scale.reshape(-1, 1), codes.shape)

    def code_bits(self, n: int) -> int:
        """Stored bits of ``n`` codes."""
        return trit_bits(n) if self.kind == "ternary" else packed_bits(n, self.bits)

    def range_bits(self) -> int:
        """Stored bits of the ranges: fp32 scales (α), plus k-bit packed zero points if asymmetric."""
        zero_points = 0 if self.zero_point is None else packed_bits(self.n_ranges, self.bits)
        return self.n_ranges * FLOAT_BITS + zero_points


class WeightQuantizer(WeightTransform):
    """Base class of weight quantizers. Subclasses set ``bits`` and implement ``quantize`` and ``qparams``."""

    kind = "quantizer"
    chain_order = 50
    bits: int
    granularity: Granularity = PerTensor()

    @property
    def row_separable(self) -> bool:
        """Quantizing any subset of rows equals slicing the quantized tensor."""
        return self.granularity.row_separable

    def validate(self, weight: torch.Tensor, name: str) -> None:
        self.granularity.validate(weight.shape, name)

    def forward(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        g = self.granularity
        grouped_mask = None if mask is None else g.to_groups(mask)
        return g.from_groups(self.quantize(g.to_groups(weight), grouped_mask), weight.shape)

    def forward_rows(self, rows: torch.Tensor, row_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.quantize(rows, mask)  # one range per row: the rows are the groups

    def quantize(self, grouped: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # [G, N] -> [G, N]
        raise NotImplementedError

    def qparams(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> QParams:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity}"


class UniformWeightQuantizer(WeightQuantizer):
    """k-bit uniform quantization; symmetric (max|w|) or asymmetric (min/max, Q-BERT).

    ``clip``: weights are clamped to ±clip first, with zero gradient outside (TernaryBERT's
    official symmetric quantizer above 2 bits). Zeros a mask left (pruned weights) stay exactly
    zero: every grid contains 0.
    """

    def __init__(self, bits: int, symmetric: bool = False, granularity: Granularity = PerTensor(),
                 clip: float | None = None):
        super().__init__()
        Fq.check_bits(bits, "weight bits")
        check(clip is None or clip > 0, f"quantizer.clip must be positive or null, got {clip!r}")
        self.bits, self.symmetric, self.granularity, self.clip = bits, symmetric, granularity, clip

    def quantize(self, grouped: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        grouped = Fq.clip_ste(grouped, self.clip)
        if self.symmetric:
            return Fq.fake_quant_symmetric(grouped, self.bits)
        return Fq.fake_quant_asymmetric(grouped, self.bits)

    def qparams(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> QParams:
        grouped = self.granularity.to_groups(weight.detach())
        if self.clip is not None:
            grouped = grouped.clamp(-self.clip, self.clip)
        if self.symmetric:
            return QParams("uniform", self.bits, self.granularity, Fq.symmetric_scale(grouped, self.bits).reshape(-1))
        scale, zero_point = Fq.asymmetric_params(grouped, self.bits)
        return QParams("uniform", self.bits, self.granularity, scale.reshape(-1), zero_point.reshape(-1))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", symmetric={self.symmetric}, clip={self.clip}"


class ActivationQuantizer(torch.nn.Module):
    """k-bit activation fake-quant (an input/output slot or an attention slot).

    ``mode="dynamic"``: range from this forward's max|x| after clamping to ±clip
    (TernaryBERT). ``mode="ema"``: static range tracked by an exponential moving
    average of the batch min/max during training (Q-BERT momentum 0.99, I-BERT 0.95),
    frozen in eval and while ``frozen`` (a stage with frozen observers). Asymmetric grids
    with a clip keep only codes inside the clip. A static symmetric grid given, in evaluation, a tensor
    that carries integer codes (``lowbit.codes``) rescales those codes dyadically, as an integer engine.
    """

    #: an observer: its statistics move in training unless frozen
    is_observer = True

    def __init__(self, bits: int = 8, symmetric: bool = True, mode: str = "dynamic",
                 clip: float | None = 2.5, momentum: float = 0.99):
        super().__init__()
        Fq.check_bits(bits, "quantizer.activation.bits", low=2, high=16)
        check(mode in ("dynamic", "ema"), f"quantizer.activation.mode must be 'dynamic' or 'ema', got {mode!r}")
        check(clip is None or clip > 0, f"quantizer.activation.clip must be positive or null, got {clip!r}")
        check(0.0 <= momentum < 1.0, f"quantizer.activation.momentum must be in [0, 1), got {momentum!r}")
        self.bits, self.symmetric, self.mode, self.clip, self.momentum = bits, symmetric, mode, clip, momentum
        self.frozen = False
        if mode == "ema":
            self.register_buffer("running_min", torch.zeros(()))
            self.register_buffer("running_max", torch.zeros(()))
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _bounds(self) -> tuple[float, float] | None:
        return None if self.clip is None else (-self.clip, self.clip)

    def _ema_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The static (lo, hi) range; in an unfrozen training forward, first EMA-update it with this batch.

        Under an initialised multi-process group (DDP) the batch min and max are all-reduced (MIN / MAX)
        over ranks before the update (``lowbit.distributed.all_reduce_range``), so every rank holds the
        same ``running_min`` / ``running_max`` — those of the global batch, as a single process with the
        whole batch would have them. Each rank's training forwards therefore take part in one collective
        per EMA observer (all ranks run the same model on equal-sized shards, so the calls match up).
        """
        if self.training and not self.frozen:
            from lowbit.distributed import all_reduce_range

            ema = self.running_min.dtype  # fp32 even when x is fp16 / bf16 (mixed precision)
            lo, hi = all_reduce_range(x.detach().amin().to(ema), x.detach().amax().to(ema))
            if not bool(self.initialized):
                self.running_min.copy_(lo), self.running_max.copy_(hi), self.initialized.fill_(True)
            else:
                self.running_min.lerp_(lo, 1 - self.momentum)
                self.running_max.lerp_(hi, 1 - self.momentum)
        return self.running_min, self.running_max

    def static_scale(self) -> torch.Tensor | None:
        """The scale of a static symmetric grid (``mode="ema"``) as it stands, without updating it; else None."""
        if self.mode != "ema" or not self.symmetric:
            return None
        return torch.maximum(self.running_min.abs(), self.running_max.abs()).clamp_min(1e-8) / (2 ** (self.bits - 1) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(1, -1)
        if self.mode == "dynamic":
            if self.symmetric:  # clip folded into the scale: one fused kernel, clipped STE
                return Fq.fake_quant_symmetric(flat, self.bits, clip=self.clip).reshape(x.shape)
            return Fq.fake_quant_asymmetric(Fq.clip_ste(flat, self.clip), self.bits,
                                            bounds=self._bounds()).reshape(x.shape)
        lo, hi = self._ema_range(Fq.clip_ste(x, self.clip))
        if self.symmetric:
            scale = torch.maximum(lo.abs(), hi.abs()).clamp_min(1e-8) / (2 ** (self.bits - 1) - 1)
            codes = requantized(x, scale, self.bits)  # x carries integer codes (evaluation): rescale as an engine
            if codes is not None:
                return attach((codes * scale.double()).to(x.dtype), codes, scale)
            return Fq.fake_quant_symmetric(flat, self.bits, scale=scale).reshape(x.shape)
        lo_, hi_ = lo.clamp(max=0.0), hi.clamp(min=0.0)
        scale = ((hi_ - lo_) / (2**self.bits - 1)).clamp_min(1e-8)
        zero_point = torch.round(-lo_ / scale)
        # values outside the static range saturate, and the fused kernel cuts their gradient
        return Fq.fake_quant_asymmetric(flat, self.bits, params=(scale, zero_point),
                                        bounds=self._bounds()).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, mode={self.mode}, clip={self.clip}"


def set_observers_frozen(model: torch.nn.Module, frozen: bool) -> int:
    """Freeze (or release) every observer's statistics; returns how many there are."""
    n = 0
    for module in model.modules():
        if getattr(module, "is_observer", False):
            module.frozen = frozen
            n += 1
    return n
