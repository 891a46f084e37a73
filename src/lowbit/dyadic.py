"""Dyadic rescaling: a ratio of scales as an integer mantissa and a shift (I-BERT's ``batch_frexp`` /
``FixedPointMul``), the one way every integer engine of lowbit changes an integer tensor's scale.

These are the no-gradient kernels; ``lowbit.algorithms.ibert.integer.requantize`` wraps them with the
straight-through gradient that QAT uses. They live in the core so that a fake-quant layer or quantizer
can rescale integer codes exactly as an engine does (``lowbit.codes``) without importing a method.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _f64(x) -> Tensor:
    return x.to(torch.float64) if isinstance(x, Tensor) else torch.tensor(x, dtype=torch.float64)


def batch_frexp(ratio: Tensor, max_bit: int = 31) -> tuple[Tensor, Tensor]:
    """Dyadic form of ``ratio``: ``(m, e)`` with ratio ~ m / 2^e, m an int64 of ``max_bit`` bits.

    As the reference's ``batch_frexp``: frexp gives ratio = f * 2^k with |f| in [0.5, 1); m = f * 2^max_bit
    rounded half away from zero (``decimal.ROUND_HALF_UP``; f * 2^max_bit is exact in float64, the rounding
    is done exactly on it), e = max_bit - k (float64). Returns m as int64 and e as float64, like the reference.
    """
    with torch.no_grad():
        r = _f64(ratio)
        f, k = torch.frexp(r)
        v = (f * 2.0**max_bit).abs()
        whole = torch.floor(v)
        m = (whole + (v - whole >= 0.5).to(torch.float64)) * torch.sign(f)
        return m.to(torch.int64), float(max_bit) - k.to(torch.float64)


def dyadic_rescale(codes: Tensor, scale_in: Tensor, scale_out: Tensor) -> Tensor:
    """round(codes * m / 2^e), (m, e) = batch_frexp(S_in / float32(S_out)), in float64 as ``FixedPointMul``
    (half to even; no clamp, no gradient)."""
    with torch.no_grad():
        scale_out = _f64(scale_out)
        ratio = _f64(scale_in) / scale_out.to(torch.float32).to(torch.float64)
        m, e = batch_frexp(ratio)
        # one multiply by m·2^-e (exact: 31 bits times a power of two): a power-of-two scale commutes with
        # float64 rounding, so this equals FixedPointMul's (q·m) / 2^e bit for bit, one full-size pass fewer
        return torch.round(_f64(codes) * (m.to(torch.float64) * torch.pow(2.0, -e)))


def requantize_symmetric(codes: Tensor, scale_in: Tensor, scale_out: Tensor, bits: int,
                         residual_codes: Tensor | None = None, residual_scale: Tensor | None = None) -> Tensor:
    """Codes at ``scale_out`` on the symmetric ``bits``-bit grid [-(2^(b-1) - 1), 2^(b-1) - 1] (no gradient):
    each addend rescaled dyadically, summed, clamped — what an integer engine does between two ops."""
    n = 2 ** (bits - 1) - 1
    out = dyadic_rescale(codes, scale_in, scale_out)
    if residual_codes is not None:
        out = dyadic_rescale(residual_codes, residual_scale, scale_out) + out
    return out.clamp(-n, n)
