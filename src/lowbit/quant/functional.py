"""Functional fake-quantization with straight-through estimators (STE).

Every function returns a tensor in the input's float dtype whose values lie on the
quantization grid, and whose gradient w.r.t. the input is the identity inside the
clipping range and zero outside it (the STE used by TernaryBERT, Q-BERT and I-BERT).
"""

from __future__ import annotations

import warnings

import torch

from lowbit.errors import check

# torch >= 2.10 deprecates quantized tensor *types*; lowbit only uses quantize/dequantize as a fast rounding
# kernel (with an elementwise fallback below when it disappears)
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated")


class _StraightThrough(torch.autograd.Function):
    """Forward: exactly ``quantized``; backward: the incoming gradient to ``x`` unchanged.

    The common ``x + (q - x).detach()`` trick leaves float residue (values drift off
    the grid by an ulp), which breaks exact level counts and packed export.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized.view_as(quantized)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def ste(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Value of ``quantized``, gradient of identity w.r.t. ``x``."""
    return _StraightThrough.apply(x, quantized.detach())


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return ste(x, torch.round(x))


class _ClipSTE(torch.autograd.Function):
    """clamp(x, -c, c) forward; gradient 1 strictly inside (-c, c), 0 at and beyond ±c.

    TernaryBERT's official quantizers zero the gradient where ``input.ge(clip)`` / ``input.le(-clip)``;
    ``torch.clamp``'s own backward would pass it at exactly ±c.
    """

    @staticmethod
    def forward(ctx, x, clip: float):
        inside = x.abs() < clip
        ctx.save_for_backward(inside)
        return x.clamp(-clip, clip)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def clip_ste(x: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Clamp to ±clip; gradient 1 strictly inside, 0 at and beyond the clip (the official code's STE).

    On CPU the clamp (and its backward) is skipped when every value lies strictly inside the
    clip, which is the common case for weights.
    """
    if clip is None or (x.is_cpu and bool(abs_max(x.reshape(1, -1)) < clip)):
        return x
    return _ClipSTE.apply(x, float(clip))


def check_bits(bits: int, option: str = "bits", low: int = 2, high: int = 8) -> None:
    check(isinstance(bits, int) and low <= bits <= high,
          f"{option} must be an integer in [{low}, {high}], got {bits!r}")


def _round_to_grid(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                   qmin, qmax) -> torch.Tensor:
    """``(clamp(round(x·(1/s) + z), qmin, qmax) − z)·s`` without autograd: the one grid definition.

    The code is ``round(fma(x, 1/s, z))`` in float32 (the float reciprocal, one fused multiply-add,
    round half to even): the formula of ``torch.quantize_per_tensor`` and of I-BERT's
    ``linear_quantize``, so every path (CPU int8 kernel, CPU elementwise, CUDA) gives the same codes. ``qmin``/``qmax`` may be per-group tensors ([G, 1]). On CPU, a per-tensor grid that is
    exactly an int8 type's range ([0, 255] asymmetric, [-127, 127] symmetric after the callers'
    clamp) uses PyTorch's vectorised quantize/dequantize (about 4x faster than elementwise ops;
    identical codes, tested); any other grid (k < 8 bits) is clamped elementwise, because the int8
    types clamp at 255/127, not at 2^k - 1.
    """
    full_range = (isinstance(qmin, int) and isinstance(qmax, int)
                  and ((qmin, qmax) == (0, 255) and zero_point is not None
                       or (qmin, qmax) == (-127, 127) and zero_point is None))
    if (full_range and x.is_cpu and x.dtype == torch.float32 and scale.numel() == 1
            and hasattr(torch, "quantize_per_tensor")):
        z = torch.zeros((), dtype=torch.long) if zero_point is None else zero_point.reshape(()).long()
        q = torch.quantize_per_tensor(x, scale.reshape(()).double(), z, torch.qint8 if qmin < 0 else torch.quint8)
        return q.dequantize()
    inv = scale.reciprocal()
    # x·(1/s) + z in one fused multiply-add, as the int8 kernels (and CUDA) compute it: two roundings
    # (multiply, then add) land a few codes per million on the other side of a .5 tie
    q = x * inv if zero_point is None else torch.addcmul(zero_point, x, inv)
    q.round_()
    q = torch.maximum(torch.minimum(q, qmax), qmin) if isinstance(qmin, torch.Tensor) else q.clamp_(qmin, qmax)
    if zero_point is not None:
        q.sub_(zero_point)
    return q.mul_(scale)


class _RoundToGridSTE(torch.autograd.Function):
    """Forward: exact grid values; backward: identity (saturation is handled by a clamp before)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        return _round_to_grid(x.detach(), scale, zero_point, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


def abs_max(grouped: torch.Tensor) -> torch.Tensor:
    """max|x| per row of a [G, N] view, shape [G] (aminmax is one pass; abs().amax() is two)."""
    g = grouped.detach()
    lo, hi = torch.aminmax(g) if g.shape[0] == 1 else torch.aminmax(g, dim=1)  # dim=1 on one row is serial
    return torch.maximum(-lo, hi).reshape(-1)


def symmetric_scale(grouped: torch.Tensor, bits: int, clip: float | None = None) -> torch.Tensor:
    """Per-group scale max|x| / (2^(b-1) - 1) for a ``[G, N]`` view, shape [G, 1] (I-BERT / TernaryBERT).

    With ``clip``, max|x| is capped at ``clip``: quantizing with that scale saturates at
    ±clip, which equals clamping to ±clip first (TernaryBERT's activation clip).
    """
    amax = abs_max(grouped)
    if clip is not None:
        amax = amax.clamp(max=clip)
    return (amax.clamp_min(1e-8) / (2 ** (bits - 1) - 1)).unsqueeze(1)


def fake_quant_symmetric(grouped: torch.Tensor, bits: int, scale: torch.Tensor | None = None,
                         clip: float | None = None) -> torch.Tensor:
    """Symmetric uniform fake-quant of a ``[G, N]`` view: 2^b - 1 levels in [-qmax, qmax]·s per group.

    ``scale=None``: from this tensor's max|x| (capped at ``clip``). Values beyond the
    range saturate and get zero gradient (the clipped STE); inside it the gradient is 1.
    """
    qmax = 2 ** (bits - 1) - 1
    if scale is None:
        amax = abs_max(grouped)
        clipped = clip is not None and (not grouped.is_cpu or bool((amax > clip).any()))
        if clip is not None:
            amax = amax.clamp(max=clip)
        scale = (amax.clamp_min(1e-8) / qmax).unsqueeze(1)
    else:
        scale, clipped = scale.reshape(-1, 1), True
    if clipped:
        limit = qmax * scale
        grouped = torch.clamp(grouped, -limit, limit) if limit.numel() > 1 else grouped.clamp(-float(limit), float(limit))
    return _RoundToGridSTE.apply(grouped, scale, None, -qmax, qmax)


def asymmetric_params(grouped: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max affine parameters per group (Q-BERT): scale and integer zero point, shape [G, 1]."""
    g = grouped.detach()
    lo, hi = torch.aminmax(g) if g.shape[0] == 1 else torch.aminmax(g, dim=1)
    lo, hi = lo.reshape(-1, 1).clamp(max=0.0), hi.reshape(-1, 1).clamp(min=0.0)  # the grid contains 0
    scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-8)
    zero_point = torch.round(-lo / scale).clamp(0, 2**bits - 1)
    return scale, zero_point


def fake_quant_asymmetric(grouped: torch.Tensor, bits: int,
                          params: tuple[torch.Tensor, torch.Tensor] | None = None,
                          bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Asymmetric min/max fake-quant of a ``[G, N]`` view: at most 2^b levels per group.

    ``params=None``: range from this tensor (nothing saturates); given (static EMA)
    params may saturate, and saturated values get zero gradient. ``bounds=(lo, hi)`` (an
    activation clip) keeps only the codes whose values lie inside it: the rounded zero point
    shifts the grid by up to half a step, and a value at the clip must not come back beyond it.
    """
    qmax = 2**bits - 1
    if params is None:
        scale, zero_point = asymmetric_params(grouped, bits)
    else:
        scale, zero_point = params[0].reshape(-1, 1), params[1].reshape(-1, 1)
        low, high = -zero_point * scale, (qmax - zero_point) * scale
        if bounds is not None:  # saturate (zero gradient) at the clip too, not only at the grid's ends
            low, high = low.clamp(min=bounds[0]), high.clamp(max=bounds[1])
        grouped = torch.clamp(grouped, low, high)
    qmin_t, qmax_t = 0, qmax
    if bounds is not None:
        inv = scale.reciprocal()
        qmin_t = torch.ceil(zero_point + bounds[0] * inv).clamp(0, qmax)
        qmax_t = torch.floor(zero_point + bounds[1] * inv).clamp(0, qmax)
    return _RoundToGridSTE.apply(grouped, scale, zero_point, qmin_t, qmax_t)
