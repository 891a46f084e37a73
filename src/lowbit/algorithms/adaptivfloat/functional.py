"""AdaptivFloat numerics (Tambe et al., DAC 2020), as EdgeBERT's accelerator stores weights.

An ``n``-bit AdaptivFloat number has 1 sign bit ``s``, ``e`` exponent bits ``E`` and ``m = n - 1 - e``
mantissa bits ``M``, and one integer exponent bias ``b`` per tensor (per range):

    value(s, E, M) = (-1)^s · 2^(E + b) · (1 + M / 2^m),   E in [0, 2^e - 1], M in [0, 2^m - 1]

with no denormals, and the code ``E = 0, M = 0`` reserved for zero (either sign), so the smallest
magnitude is ``2^b · (1 + 2^-m)`` and the largest ``2^(b + 2^e - 1) · (2 - 2^-m)``: 2^n - 1 distinct values.
``b`` is chosen from the tensor so that its max |x| lies in the top binade: ``b = floor(log2 max|x|) - (2^e - 1)``.

Quantizing rounds |x| to the nearest representable magnitude: above the largest it saturates; inside a binade
the mantissa is rounded half to even; below half the smallest it becomes 0 and from half the smallest up to
the smallest it becomes the smallest (EdgeBERT's ``AdpfloatType::set_value``). Signs are kept.

Every function works on a ``[G, N]`` view with one bias per row (per range) unless it says otherwise; the
``adaptivfloat_*`` functions take a whole tensor as one range.
"""

from __future__ import annotations

import torch

from lowbit.errors import check
from lowbit.quant import functional as Fq

MIN_BITS, MAX_BITS = 4, 8
FLOAT32_MAX_EXPONENT = 127
FLOAT32_MIN_NORMAL_EXPONENT = -126


def check_format(bits, exp_bits, bits_option: str = "bits", exp_option: str = "exp_bits") -> None:
    """One-line errors for a bit width outside [4, 8], or exponent bits that leave no room for the sign bit."""
    check(isinstance(bits, int) and not isinstance(bits, bool) and MIN_BITS <= bits <= MAX_BITS,
          f"{bits_option} must be an integer in [{MIN_BITS}, {MAX_BITS}] for AdaptivFloat, got {bits!r}")
    check(isinstance(exp_bits, int) and not isinstance(exp_bits, bool) and 1 <= exp_bits <= bits - 1,
          f"{exp_option} must be an integer in [1, {bits - 1}] at {bits} bits "
          f"(1 sign bit + exponent bits + mantissa bits), got {exp_bits!r}")


def exponent_bias(max_abs: torch.Tensor, exp_bits: int) -> torch.Tensor:
    """Per range: the bias that puts max|x| in the top binade, ``floor(log2 max|x|) - (2^e - 1)`` (int64).

    An all-zero range gets the bias of max|x| = 1 (any bias represents it)."""
    amax = max_abs.detach().float()
    exp_max = torch.frexp(torch.where(amax > 0, amax, torch.ones_like(amax)))[1].long() - 1
    return exp_max - (2**exp_bits - 1)


def pow2(exponent: torch.Tensor) -> torch.Tensor:
    """2^exponent in float32, exactly (down to float32's smallest subnormal)."""
    return torch.ldexp(torch.ones(exponent.shape, device=exponent.device), exponent.to(torch.int32))


def limits(bits: int, exp_bits: int, exp_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(smallest, largest) representable magnitude for each bias."""
    m = bits - 1 - exp_bits
    bias = exp_bias.long()
    smallest = (2**m + 1) * pow2(bias - m)
    largest = (2 ** (m + 1) - 1) * pow2(bias + 2**exp_bits - 1 - m)
    return smallest, largest


def check_bias(exp_bias: int, exp_bits: int) -> None:
    """An explicit bias must keep the top binade inside float32 (a bias computed from a float32 tensor does)."""
    check(int(exp_bias) + 2**exp_bits - 1 <= FLOAT32_MAX_EXPONENT,
          f"exp_bias={int(exp_bias)} puts the top binade (2^{int(exp_bias) + 2**exp_bits - 1}) beyond float32")


def adaptivfloat_values(bits: int, exp_bits: int, exp_bias: int) -> torch.Tensor:
    """Every value the format represents with bias ``exp_bias``, sorted (2^bits - 1 float32 values, one zero)."""
    check_format(bits, exp_bits)
    check_bias(exp_bias, exp_bits)
    m = bits - 1 - exp_bits
    exps = torch.arange(2**exp_bits).repeat_interleave(2**m)
    mants = torch.arange(2**m).repeat(2**exp_bits)
    magnitudes = (2**m + mants) * pow2(exps + int(exp_bias) - m)
    magnitudes = magnitudes[1:]  # E = 0, M = 0 is zero
    return torch.cat([-magnitudes.flip(0), torch.zeros(1), magnitudes])


def _round_mantissa_bits_(a: torch.Tensor, m: int) -> torch.Tensor:
    """Normal (or zero) float32 ``a`` >= 0 rounded to ``m`` mantissa bits, half to even, in place on its bit
    pattern: add half a step minus one plus the lowest kept bit, cut the dropped bits (a carry moves to the
    next binade)."""
    shift = 23 - m  # float32 has 23 mantissa bits
    pattern = a.view(torch.int32)
    pattern.add_(pattern.bitwise_right_shift(shift).bitwise_and_(1)).add_((1 << (shift - 1)) - 1)
    pattern.bitwise_and_(~((1 << shift) - 1))
    return a


def _round_mantissa_frexp(a: torch.Tensor, m: int) -> torch.Tensor:
    """The same by frexp: a = f·2^k, f in [0.5, 1), one step is 2^(k - 1 - m); also exact for float32 subnormals."""
    step = torch.ldexp(torch.ones_like(a), torch.frexp(a)[1] - (m + 1))
    return torch.round(a / step) * step


def _quantize_block(x: torch.Tensor, m: int, smallest, largest, bit_rounding: bool) -> torch.Tensor:
    a = x.abs().clamp_(max=largest)  # saturate
    flushed = a < 0.5 * smallest
    q = _round_mantissa_bits_(a, m) if bit_rounding else _round_mantissa_frexp(a, m)
    # no denormals: from half the smallest value up at least the smallest, below it 0
    return q.clamp_(min=smallest).masked_fill_(flushed, 0.0).copysign_(x)


#: elements quantized per block: the dozen elementwise passes then run in cache (about 5x faster on CPU)
BLOCK = 1 << 14


def quantize_grouped(grouped: torch.Tensor, bits: int, exp_bits: int,
                     exp_bias: torch.Tensor | None = None) -> torch.Tensor:
    """AdaptivFloat values of a ``[G, N]`` view (no autograd), one bias per row (``[G]``; None: from each row's max).

    Computed in float32 and returned in the input's dtype."""
    x = grouped.detach().float()
    if exp_bias is None:
        exp_bias = exponent_bias(Fq.abs_max(x), exp_bits)
    smallest, largest = (t.reshape(-1, 1) for t in limits(bits, exp_bits, exp_bias.reshape(-1)))
    m = bits - 1 - exp_bits
    # the bit-pattern rounding needs normal floats from half the smallest value up (any real weight's range)
    bit_rounding = bool((exp_bias >= FLOAT32_MIN_NORMAL_EXPONENT + 1).all())
    if not x.is_cpu:  # whole-tensor kernels: blocks would only multiply the launches
        return _quantize_block(x, m, smallest, largest, bit_rounding).to(grouped.dtype)
    out = torch.empty_like(x)
    if x.shape[0] == 1:  # one range: scalar bounds, blocks along the row
        lo, hi = float(smallest), float(largest)
        for i in range(0, x.shape[1], BLOCK):
            out[:, i:i + BLOCK] = _quantize_block(x[:, i:i + BLOCK], m, lo, hi, bit_rounding)
    else:  # blocks of whole rows, each with its bounds
        rows = max(1, BLOCK // max(1, x.shape[1]))
        for i in range(0, x.shape[0], rows):
            out[i:i + rows] = _quantize_block(x[i:i + rows], m, smallest[i:i + rows], largest[i:i + rows],
                                              bit_rounding)
    return out.to(grouped.dtype)


def adaptivfloat_quantize(x: torch.Tensor, bits: int = 8, exp_bits: int = 3,
                          exp_bias: int | torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (any shape, one range) rounded to ``bits``-bit AdaptivFloat with ``exp_bits`` exponent bits.

    ``exp_bias=None``: chosen so that max|x| is representable (the top binade holds it)."""
    check_format(bits, exp_bits)
    bias = None if exp_bias is None else torch.as_tensor(exp_bias, dtype=torch.int64).reshape(1)
    if bias is not None:
        check_bias(int(bias), exp_bits)
    return quantize_grouped(x.reshape(1, -1), bits, exp_bits, bias).reshape(x.shape)


def fake_quant_adaptivfloat(grouped: torch.Tensor, bits: int, exp_bits: int) -> torch.Tensor:
    """AdaptivFloat values of a ``[G, N]`` view (bias per row from its max), gradient straight through (identity).

    Only values of the top binade above the largest magnitude saturate (the bias follows the tensor's max),
    so the identity gradient is not clipped."""
    return Fq.ste(grouped, quantize_grouped(grouped, bits, exp_bits))


def encode(grouped: torch.Tensor, bits: int, exp_bits: int, exp_bias: torch.Tensor) -> torch.Tensor:
    """Codes ``s·2^(n-1) + E·2^m + M`` (int64, unsigned, zero = 0) of a ``[G, N]`` view already on the grid."""
    m = bits - 1 - exp_bits
    q = grouped.detach().float()
    a = q.abs()
    mant, k = torch.frexp(a)  # a = mant * 2^k, mant in [0.5, 1)
    exp_field = (k.long() - 1) - exp_bias.reshape(-1, 1).long()
    mant_field = (torch.ldexp(mant, torch.full_like(k, m + 1)).long() - 2**m)
    codes = (q < 0).long() * 2 ** (bits - 1) + exp_field * 2**m + mant_field
    return torch.where(a == 0, torch.zeros_like(codes), codes)


def decode(codes: torch.Tensor, bits: int, exp_bits: int, exp_bias: torch.Tensor) -> torch.Tensor:
    """float32 values of codes ``[G, N]`` (``encode``'s inverse; E = 0, M = 0 is zero whatever the sign)."""
    m = bits - 1 - exp_bits
    c = codes.long()
    sign = c >> (bits - 1)
    exp_field = (c >> m) & (2**exp_bits - 1)
    mant_field = c & (2**m - 1)
    magnitude = (2**m + mant_field).float() * pow2(exp_field + exp_bias.reshape(-1, 1).long() - m)
    magnitude = torch.where((exp_field == 0) & (mant_field == 0), torch.zeros_like(magnitude), magnitude)
    return torch.where(sign.bool(), -magnitude, magnitude)
