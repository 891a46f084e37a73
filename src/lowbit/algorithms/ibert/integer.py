"""I-BERT's integer-only kernels (Kim et al., ICML 2021, arXiv 2101.01321) as pure functions.

Conventions
-----------
* **codes** are float64 tensors that hold exact integers. Quantization-aware training carries the
  integer values in float64 (as I-BERT's code carries them in float), so every intermediate below
  2^53 is exact; float32 inputs are cast to float64 inside every function.
* **scales** are float64 tensors broadcastable to the codes: 0-dim (or shape (1,)) per tensor, or per
  channel over the last dim. The real value is ``codes * scale``.
* Gradients pass straight through ``floor`` / ``round`` (``floor_ste`` / ``round_ste``: value of the
  floor/round, gradient of the identity), wherever the reference does; the requantization step passes
  ``grad * scale_in / scale_out`` as the reference's ``FixedPointMul.backward`` (``grad / S_out`` w.r.t. the
  real input ``codes * S_in``). Scales get no gradient, except the LayerNorm output scale through ``weight``.

Every kernel reproduces, operation by operation, transformers' ``models/ibert/quant_modules.py`` (the
official kssteven418/I-BERT numerics), so that with the same codes and scales the results are bit-exact
(``tests/test_ibert_numerics.py`` checks it against the reference modules run in float64).

Quantization (``SymmetricQuantFunction``, ``QuantLinear``)
    S = max(|x|, 1e-8) / (2^(b-1) - 1); q = clamp(round(x * (1/S)), -(2^(b-1) - 1), 2^(b-1) - 1).
    The reference multiplies by the reciprocal (``1.0 / scale * x``) rather than dividing; lowbit does the
    same, the two differ by one ulp on some inputs and so, at .5 ties, by one code. Linear weights are
    8-bit per output channel; the bias is 32-bit with scale S_w * S_x; the accumulator is
    ``x_codes @ w_codes.T + b_codes`` with scale S_w * S_x (int32 on an engine).

Dyadic requantization (``batch_frexp``, ``FixedPointMul``)
    A ratio of scales r = S_in / S_out is written m / 2^e with a 31-bit integer mantissa m
    (frexp's mantissa * 2^31 rounded half away from zero) and an integer shift e, so an engine rescales
    with one integer multiply and one shift: q_out = clamp(round(q * m / 2^e), -2^(b-1), 2^(b-1) - 1)
    (``torch.round``: half to even). A residual q_r (scale S_r) is rescaled the same way and added before
    the clamp. As the reference, S_out enters the ratio rounded to float32 (``z_scaling_factor.float()``),
    and ``q * m`` is formed in float64 (exact while |q * m| < 2^53, i.e. |q| < 2^22; above that rounded as
    in the reference).

i-GELU (``IntGELU``; paper eq. 7-8)
    GELU(x) = x/2 * (1 + erf(x/sqrt2)), erf(x) ~ L(x) = sgn(x) [a (min(|x|, -b) + b)^2 + 1] with
    a = -0.2888, b = -1.769, and 1/sqrt2 as k = 1.4142. With S' = S/k: b_int = floor(b/S'),
    c_int = floor((1/a) / S'^2), L_int = sgn(q) ((min(|q|, -b_int) + b_int)^2 + c_int) at scale a S'^2,
    then shifted right by n = 14 bits (floor) so it fits 32 bits: scale a S'^2 2^14. The output is
    q * (L_int + floor(1 / S_L)) at scale S * S_L / 2.

i-exp and i-softmax (``IntSoftmax``; paper Algorithm 2)
    x <= 0 is written x = (-ln2) z + p with p in (-ln2, 0], exp(x) = 2^-z exp(p), and exp(p) ~
    a (p + b)^2 + c. The constants are the code's least-squares fit a = 0.35815147, a*2b = 0.96963238,
    a(b^2) + c = 1 (the paper prints them rounded: 0.3585, 1.353, 0.344); x0 = -0.6931 for -ln2, and z is
    capped at 30 (``const``): x0_int = floor(x0/S), q = max(q, 30 x0_int), z = floor(q / x0_int),
    p_int = q - z x0_int, exp_int = max(floor(((p_int + b_int) p_int + c_int) * 2^(30 - z)), 0) at scale
    a S^2 / 2^30. i-softmax subtracts the row max first, requantizes the exp codes to 16 bits (the
    reference's inner ``QuantAct(16)`` "avoid overflow"), and normalises with integers:
    factor = floor(2^32 / sum), out = floor(exp16 * factor / 2^(32 - b_out)) at scale 2^-b_out.

i-LayerNorm (``IntLayerNorm``; paper section 3.5)
    mean_int = round(mean(q)), y = q - mean_int, var = sum(floor(y / 2^shift)^2) (the shift keeps
    var below 2^max_bit, max_bit = 32; it grows in training, ``layernorm_shift``),
    std = isqrt(var) * 2^shift, factor = floor(2^31 / std), out = floor(y * factor / 2) + floor(beta/gamma / S)
    at scale S * gamma with S = sqrt(n)/2^30 (sqrt(n) rounded to float32 as the reference's ``dim_sqrt``).
    ``isqrt`` is the paper's integer Newton iteration (no floating point).

Where lowbit deliberately differs from the reference
    1. Symmetric grid: codes are clamped to [-(2^(b-1) - 1), 2^(b-1) - 1] (8 bits: [-127, 127]); the
       reference's ``SymmetricQuantFunction`` clamps to [-(2^(b-1) - 1), 2^(b-1) - 2] ([-127, 126]), so the
       entry at +max|x| becomes 126. The codes are equal everywhere else.
    2. LayerNorm's std uses the integer Newton ``isqrt`` (the paper's algorithm) where the code uses
       float ``floor(sqrt(var))`` with a TODO; both are floor(sqrt(var)), so results are equal. The root
       is held at >= 1: a row whose deviations all vanish (var = 0) gives finite output instead of the
       reference's 0 * inf = NaN.
    3. LayerNorm overflow: ``int_layernorm(grow_shift=True)`` computes var with the shift
       ``layernorm_shift(codes, shift, max_bit)`` (= ``shift`` unless var would reach 2^max_bit), i.e. the
       reference's training-time fallback; lowbit's modules and engines pass ``grow_shift=False`` in
       evaluation (the stored shift, as the reference, so outputs do not depend on the batch; var may then
       pass 2^max_bit, exact in int64). ``layernorm_shift`` computes the reference's ``set_shift`` ceil(log2(sqrt(var / 2^max_bit)))
       with integer bit lengths instead of float log2/sqrt (equal except where float rounding puts var
       just above a power of 4 onto it).
    4. i-softmax's 16-bit requantization: the reference passes the exp *codes* to its ``QuantAct(16)`` as if
       they were real values, so its ``FixedPointMul`` computes round(round(q/S_exp) * dyadic(S_exp/S16)),
       a float division no integer kernel performs, with S16 observed on codes. lowbit requantizes
       the exp codes with their scale, ``requantize(q, S_exp, S16, 16)`` = round(q * dyadic(S_exp/S16)),
       with S16 observed on the real exp values (at most ~1, so the observer is independent of the input
       scale). Both are round(q * 32767 / max q) up to the rounding of the 31-bit mantissa and the float32
       scale: the 16-bit codes differ by +-1 on a few percent of the entries (about 4% in the tests' samples),
       the 8-bit outputs on about 2 in a million. With the reference's inner QuantAct fed the real values
       it is bit-exact (tested).
    5. ``int_gelu`` returns a positive scale: the reference's is negative (a < 0), with negated codes;
       lowbit negates both (exact), so codes * scale is the same bits.
    6. ``requantize`` keeps its float64 result: the reference casts to float32 before the clamp, which
       changes nothing for b <= 24 bits but rounds codes above 2^24 for wider outputs.

Table 1 (``gelu_approximation_errors``) and the i-exp error (``i_exp_max_error``) are computed from the
float forms as the paper defines them; see their docstrings for the definitions that reproduce the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd import Function

from lowbit.dyadic import batch_frexp
from lowbit.dyadic import dyadic_rescale as _dyadic_rescale
from lowbit.errors import check

__all__ = [
    "IntegerTable", "batch_frexp", "floor_ste", "gelu_approximation_errors", "h_gelu", "i_exp_float", "i_exp_max_error",
    "i_gelu_float", "int_exp", "int_gelu", "int_layernorm", "int_softmax", "isqrt", "layernorm_shift",
    "linear_int", "quantize_bias", "quantize_symmetric", "quantize_weight_per_channel", "requantize",
    "round_ste", "sigmoid_gelu", "symmetric_scale",
]

# i-GELU (reference IntGELU): erf(x) ~ sgn(x)[a (min(|x|, -b) + b)^2 + 1], 1/sqrt2 as 1/k, shift n
GELU_K = 1.4142
GELU_SHIFT = 14
GELU_A, GELU_B = -0.2888, -1.769
GELU_C = 1 / GELU_A  # the polynomial as a((x + b)^2 + 1/a): the "+1" at scale a S^2
# i-exp (reference IntSoftmax): x0 ~ -ln2, z capped at EXP_CONST, exp(p) ~ a p^2 + b p + c as a(p^2 + (b/a) p + c/a)
EXP_X0 = -0.6931
EXP_CONST = 30
EXP_A = 0.35815147
EXP_B = 0.96963238 / EXP_A
EXP_C = 1.0 / EXP_A
SOFTMAX_MAX_BIT = 32
# i-LayerNorm: factor = floor(2^31 / std), output scale sqrt(n) / 2^30
LAYERNORM_FACTOR_BITS = 31


def _f64(x) -> Tensor:
    """float64 view of ``x`` (a tensor keeps its graph; python numbers become 0-dim tensors)."""
    return x.to(torch.float64) if isinstance(x, Tensor) else torch.tensor(x, dtype=torch.float64)


class _FloorSTE(Function):
    """floor(x) forward, identity backward (the reference's ``floor_ste``)."""

    @staticmethod
    def forward(ctx, x):
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


class _RoundSTE(Function):
    """round(x) (half to even) forward, identity backward (the reference's ``round_ste``)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


def floor_ste(x: Tensor) -> Tensor:
    """floor(x); the gradient passes straight through."""
    return _FloorSTE.apply(x)


def round_ste(x: Tensor) -> Tensor:
    """round(x), half to even as ``torch.round``; the gradient passes straight through."""
    return _RoundSTE.apply(x)


class _ScaledSTE(Function):
    """Value ``value``; gradient ``grad * gain`` to ``x`` and ``grad * gain_r`` to ``r`` (``r`` may be None)."""

    @staticmethod
    def forward(ctx, value, x, gain, r, gain_r):
        ctx.save_for_backward(gain, gain_r if r is not None else None)
        ctx.shapes = x.shape, (r.shape if r is not None else None)
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        gain, gain_r = ctx.saved_tensors
        shape, shape_r = ctx.shapes
        gx = (grad * gain).sum_to_size(shape) if ctx.needs_input_grad[1] else None
        gr = (grad * gain_r).sum_to_size(shape_r) if shape_r is not None and ctx.needs_input_grad[3] else None
        return None, gx, None, gr, None


class _SymmetricQuantSTE(Function):
    """clamp(round(x * (1/S)), lo, hi); gradient ``grad / S`` (through round and clamp, as the reference)."""

    @staticmethod
    def forward(ctx, x, scale, lo, hi):
        ctx.save_for_backward(scale)
        ctx.shape = x.shape
        return torch.clamp(torch.round(1.0 / scale * x), lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return (grad / scale).sum_to_size(ctx.shape), None, None, None


def symmetric_scale(absmax: Tensor, bits: int) -> Tensor:
    """S = max(absmax, 1e-8) / (2^(b-1) - 1) (reference ``symmetric_linear_quantization_params``; no gradient)."""
    with torch.no_grad():
        return torch.clamp(_f64(absmax), min=1e-8) / (2 ** (bits - 1) - 1)


def quantize_symmetric(x: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Codes round(x * (1/S)) clamped to lowbit's symmetric grid [-(2^(b-1) - 1), 2^(b-1) - 1].

    The reference (``SymmetricQuantFunction``) clamps to [-(2^(b-1) - 1), 2^(b-1) - 2] (8 bits: [-127, 126]);
    lowbit keeps +127, so the codes differ exactly where the reference clips 2^(b-1) - 1 to 2^(b-1) - 2.
    Gradient w.r.t. ``x``: ``grad / S`` (straight through round and clamp, as the reference).
    """
    n = 2 ** (bits - 1) - 1
    return _SymmetricQuantSTE.apply(_f64(x), _f64(scale).detach(), -n, n)


def quantize_weight_per_channel(w: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """``(codes [out, in], scale [out])``: S_j = max_i |w_ji| / (2^(b-1) - 1) per output row (``QuantLinear``)."""
    check(w.dim() == 2, f"quantize_weight_per_channel expects a [out, in] weight, got shape {tuple(w.shape)}")
    w = _f64(w)
    with torch.no_grad():
        scale = symmetric_scale(w.detach().abs().amax(dim=1), bits)
    return quantize_symmetric(w, scale[:, None], bits), scale


def quantize_bias(b: Tensor, scale: Tensor, bits: int = 32) -> Tensor:
    """32-bit bias codes with scale S_w * S_x (per output channel), as ``QuantLinear``."""
    return quantize_symmetric(b, scale, bits)


def linear_int(x_codes: Tensor, x_scale: Tensor, w_codes: Tensor, w_scale: Tensor,
               b_codes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Integer linear: ``(x_codes @ w_codes.T + b_codes, S_w * S_x)`` (the int32 accumulator of ``QuantLinear``).

    ``x_scale`` is per tensor; ``w_scale`` per output channel ([out]) or per tensor.
    """
    acc_scale = _f64(w_scale) * _f64(x_scale).reshape(-1)
    b = None if b_codes is None else _f64(b_codes)
    return torch.nn.functional.linear(_f64(x_codes), _f64(w_codes), b), acc_scale


def requantize(codes: Tensor, scale_in: Tensor, scale_out: Tensor, bits: int,
               residual_codes: Tensor | None = None, residual_scale: Tensor | None = None) -> Tensor:
    """Codes at ``scale_out`` (``bits`` wide, [-2^(b-1), 2^(b-1) - 1]) with integer-only arithmetic.

    The reference's ``FixedPointMul``: round(q * m / 2^e) with (m, e) = batch_frexp(S_in / S_out) (S_out
    rounded to float32 in the ratio, as the reference), plus round(q_r * m_r / 2^e_r) for the residual
    (the identity branch), then clamped. ``torch.round`` rounds half to even, as the reference.
    Gradient: ``grad * S_in / S_out`` to ``codes`` and ``grad * S_r / S_out`` to ``residual_codes``.
    """
    check((residual_codes is None) == (residual_scale is None),
          "requantize needs both residual_codes and residual_scale, or neither")
    codes, scale_in, scale_out = _f64(codes), _f64(scale_in).detach(), _f64(scale_out).detach()
    n = 2 ** (bits - 1) - 1
    with torch.no_grad():
        out = _dyadic_rescale(codes.detach(), scale_in, scale_out)
        if residual_codes is not None:
            residual_codes, residual_scale = _f64(residual_codes), _f64(residual_scale).detach()
            out = _dyadic_rescale(residual_codes.detach(), residual_scale, scale_out) + out
        out = torch.clamp(out, -n - 1, n)
    grads = codes.requires_grad or (residual_codes is not None and residual_codes.requires_grad)
    if not (torch.is_grad_enabled() and grads):
        return out
    gain_r = None if residual_codes is None else residual_scale / scale_out
    return _ScaledSTE.apply(out, codes, scale_in / scale_out, residual_codes, gain_r)


def int_gelu(codes: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """i-GELU on codes at ``scale``: ``(codes, scale)`` of x * (1 + L(x/sqrt2)) / 2 (reference ``IntGELU``).

    The reference's output scale S * S_L / 2 is negative (a < 0) with negated codes; lowbit returns both
    negated (a positive scale, the same real values bit for bit).
    """
    q, scale = _f64(codes), _f64(scale).detach()
    s = scale / GELU_K
    b_int = torch.floor(GELU_B / s)
    c_int = torch.floor(GELU_C / s**2)
    sign = torch.sign(q)
    abs_int = torch.min(torch.abs(q), -b_int)
    erf_int = sign * ((abs_int + b_int) ** 2 + c_int)
    erf_scale = s**2 * GELU_A
    erf_int = floor_ste(erf_int / 2**GELU_SHIFT)  # keep it within 32 bits
    erf_scale = erf_scale * 2**GELU_SHIFT
    one_int = 1.0 // erf_scale  # the "+1": floor(1 / S_L) (negative, as S_L)
    out = q * (erf_int + one_int)
    out_scale = scale * erf_scale / 2
    return -out, -out_scale


def int_exp(codes: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """i-exp of codes <= 0 at ``scale``: ``(codes, scale)`` (reference ``IntSoftmax.int_exp``)."""
    q, scale = _f64(codes), _f64(scale).detach()
    with torch.no_grad():
        x0_int = torch.floor(EXP_X0 / scale)
    q = torch.max(q, EXP_CONST * x0_int)
    z = floor_ste(q / x0_int)
    p = q - x0_int * z
    with torch.no_grad():
        b_int = torch.floor(EXP_B / scale)
        c_int = torch.floor(EXP_C / scale**2)
    poly = (p + b_int) * p + c_int
    poly_scale = EXP_A * scale**2
    exp_int = torch.clamp(floor_ste(poly * 2 ** (EXP_CONST - z)), min=0)
    return exp_int, poly_scale / 2**EXP_CONST


class IntegerTable:
    """An exact elementwise integer function ``fn(codes, scale) -> (codes, scale)`` of integer codes in
    [``lo``, ``hi``], tabulated once per (per-tensor) scale: without gradients the codes are looked up, one
    gather instead of ~15 float64 passes over the tensor (what the ``int8_ort`` engine does). ``fn`` must
    be elementwise in the codes, so the looked-up values are the computed ones bit for bit. With gradients
    (QAT), a per-channel scale, or a domain wider than ``MAX_ENTRIES`` (wider input grids, e.g.
    ``approximation.gelu_input_bits=24``), ``fn`` runs as before. Codes outside [lo, hi] are an IndexError."""

    MAX_ENTRIES = 2**17  # the 16-bit grids (65,535 and 131,069 codes): ~1 MB of float64

    def __init__(self, fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], lo: int, hi: int):
        self.fn, self.lo, self.hi = fn, lo, hi
        self._key: tuple | None = None
        self._table: tuple[Tensor, Tensor] | None = None

    def __call__(self, codes: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        if torch.is_grad_enabled() or scale.numel() != 1 or self.hi - self.lo + 1 > self.MAX_ENTRIES:
            return self.fn(codes, scale)
        key = (float(scale), codes.device)
        if self._key != key:
            grid = torch.arange(self.lo, self.hi + 1, dtype=torch.float64, device=codes.device)
            self._table, self._key = self.fn(grid, scale), key
        values, out_scale = self._table
        index = (_f64(codes) - self.lo).to(torch.int64)
        return values.take(index), out_scale


def int_softmax(codes: Tensor, scale: Tensor, output_bits: int = 8,
                exp_scale_fn: Callable[[Tensor], Tensor] | None = None,
                exp_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, Tensor]:
    """i-softmax over the last dim: ``(codes, 2^-output_bits)`` (reference ``IntSoftmax.forward``).

    Row max subtracted, ``int_exp``, the exp codes requantized to 16 bits with scale
    ``exp_scale_fn(exp)`` (``exp`` the real, detached exp values; the caller's EMA observer); ``None``: this
    call's max|exp| / (2^15 - 1). ``exp_fn``: ``int_exp`` or a table of it (``IntegerTable``). Then factor = floor(2^32 / row sum), out = floor(e16 * factor / 2^(32 - b)).
    The largest entry of a row whose others vanish is 2^b (one past the b-bit unsigned range), as the reference.
    """
    q, scale = _f64(codes), _f64(scale).detach()
    q = q - q.max(dim=-1, keepdim=True).values
    exp_int, exp_scale = (exp_fn or int_exp)(q, scale)
    exp_values = (exp_int * exp_scale).detach()
    if exp_scale_fn is None:
        scale16 = symmetric_scale(exp_values.abs().max(), 16)
    else:
        scale16 = _f64(exp_scale_fn(exp_values))
    exp16 = requantize(exp_int, exp_scale, scale16, 16)
    factor = floor_ste(2**SOFTMAX_MAX_BIT / exp16.sum(dim=-1, keepdim=True))
    out = floor_ste(exp16 * factor / 2 ** (SOFTMAX_MAX_BIT - output_bits))
    return out, torch.tensor(1 / 2**output_bits, dtype=torch.float64, device=out.device)


def _bit_length(n: Tensor) -> Tensor:
    """Number of bits of each non-negative int64 (0 for 0), by binary search on right shifts."""
    v, bits = n.clone(), torch.zeros_like(n)
    for s in (32, 16, 8, 4, 2, 1):
        big = (v >> s) > 0
        v = torch.where(big, v >> s, v)
        bits = bits + big.to(n.dtype) * s
    return bits + (v > 0).to(n.dtype)


def isqrt(n: Tensor) -> Tensor:
    """floor(sqrt(n)) for integers 0 <= n < 2^63 by integer Newton iteration (I-BERT Algorithm 4).

    x_0 = 2^ceil(bits(n)/2) > sqrt(n), then x_{k+1} = floor((x_k + floor(n / x_k)) / 2) while it decreases:
    from above, the iterates stay >= floor(sqrt(n)) and stop exactly there (6-7 steps for 63 bits). Only
    integer ops (no float sqrt, not even for the first guess). int64 in and out; a float64 tensor of
    integer values is accepted and the result returned as float64.
    """
    n_in = n if isinstance(n, Tensor) else torch.tensor(n)
    if n_in.is_floating_point():
        x = n_in.detach().to(torch.float64)
        check(bool(((x >= 0) & (x < 2.0**63) & (x == torch.floor(x))).all()),
              "isqrt needs integer values in [0, 2^63)")
        return isqrt(x.to(torch.int64)).to(n_in.dtype)
    check(not n_in.dtype.is_complex and n_in.dtype != torch.bool, f"isqrt needs integers, got {n_in.dtype}")
    n_in = n_in.to(torch.int64)
    check(bool((n_in >= 0).all()), "isqrt needs non-negative integers")
    x = torch.ones_like(n_in) << ((_bit_length(n_in) + 1) // 2)
    while True:
        y = (x + n_in // x.clamp(min=1)) >> 1
        smaller = y < x
        if not bool(smaller.any()):
            return x
        x = torch.where(smaller, y, x)


class _IsqrtSTE(Function):
    """isqrt(var) forward (integers only); backward the derivative of the real sqrt, as ``floor_ste(sqrt)``."""

    @staticmethod
    def forward(ctx, var):
        ctx.save_for_backward(var)
        return isqrt(var.to(torch.int64)).to(var.dtype)

    @staticmethod
    def backward(ctx, grad):
        (var,) = ctx.saved_tensors
        return grad / (2 * torch.sqrt(var))  # backward only: the reference's sqrt gradient


def _centered(codes: Tensor) -> Tensor:
    """y = q - round(mean(q)) over the last dim."""
    return codes - round_ste(codes.mean(dim=-1, keepdim=True))


def _shifted_var(y: Tensor, shift: int) -> Tensor:
    return (floor_ste(y / 2**shift) ** 2).sum(dim=-1, keepdim=True)


def _needed_shift(var: Tensor, max_bit: int) -> int | None:
    """max over rows of ceil(log2(sqrt(var / 2^max_bit))) = ceil((ceil(log2 var) - max_bit) / 2), in integers."""
    var = var[var > 0]
    if var.numel() == 0:
        return None
    f, k = torch.frexp(var.max())  # var = f 2^k, f in [0.5, 1): ceil(log2 var) = k - (f == 0.5)
    ceil_log2 = int(k) - int(f == 0.5)
    return -((max_bit - ceil_log2) // 2)


def layernorm_shift(codes: Tensor, shift: int, max_bit: int = 32) -> int:
    """The shift the reference's ``IntLayerNorm`` holds after a training forward on ``codes``.

    ``shift`` itself while sum(floor(y / 2^shift)^2) < 2^max_bit in every row; otherwise the reference's
    ``set_shift``: max(shift, max over rows of ceil(log2(sqrt(sum(y^2) / 2^max_bit)))), computed with
    integer bit lengths (the reference uses float log2/sqrt: equal except where float rounding puts
    sum(y^2) just above a power of 4 onto it).
    """
    with torch.no_grad():
        y = _centered(_f64(codes).detach())
        if float(_shifted_var(y, shift).max()) < 2**max_bit:
            return int(shift)
        needed = _needed_shift((y**2).sum(dim=-1), max_bit)
        return int(shift) if needed is None else max(int(shift), needed)


def int_layernorm(codes: Tensor, scale: Tensor, weight: Tensor, bias: Tensor, shift: int,
                  max_bit: int = 32, grow_shift: bool = True) -> tuple[Tensor, Tensor]:
    """i-LayerNorm over the last dim: ``(codes, scale)`` (reference ``IntLayerNorm.forward``, quant mode).

    std = isqrt(var) (integer Newton) instead of the reference's float floor(sqrt(var)), held >= 1;
    var uses ``layernorm_shift(codes, shift, max_bit)`` (``shift`` unless var would reach 2^max_bit) when
    ``grow_shift``; with ``grow_shift=False`` (lowbit's evaluation and engines) the given ``shift`` as is: a
    shift that grows with the batch makes one row's output depend on the other rows (var may then pass
    2^max_bit on outlier rows: exact in int64 / float64).
    ``scale`` (the input's) does not enter the arithmetic: the output scale is sqrt(n)/2^30 * weight
    (differentiable w.r.t. ``weight``); the bias enters as codes floor(bias/weight / (sqrt(n)/2^30)).
    """
    del scale  # normalisation is scale-free; the argument keeps the (codes, scale) convention
    q = _f64(codes)
    weight, bias = _f64(weight), _f64(bias)
    n = q.shape[-1]
    dim_sqrt = torch.sqrt(torch.tensor(float(n), dtype=torch.float32)).to(torch.float64)  # the reference's dim_sqrt
    y = _centered(q)
    if grow_shift:  # frozen (evaluation, engines): the stored shift, so a row's output never depends on its batch
        shift = layernorm_shift(q.detach(), shift, max_bit)
    var = _shifted_var(y, shift)
    std = torch.clamp(_IsqrtSTE.apply(var), min=1) * 2**shift
    factor = floor_ste(2**LAYERNORM_FACTOR_BITS / std)
    y = floor_ste(y * factor / 2)
    out_scale = dim_sqrt / 2 ** (LAYERNORM_FACTOR_BITS - 1)
    bias_int = floor_ste(bias.detach() / weight.detach() / out_scale)
    return y + bias_int, out_scale * weight


# ---------------------------------------------------------------------------------------------------------
# Float forms of the paper's approximations (I-BERT Table 1)


def h_gelu(x: Tensor) -> Tensor:
    """h-GELU, the paper's integer baseline: x * ReLU6(1.702 x + 3) / 6."""
    return x * torch.nn.functional.relu6(1.702 * x + 3) / 6


def sigmoid_gelu(x: Tensor) -> Tensor:
    """x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


def i_gelu_float(x: Tensor) -> Tensor:
    """The paper's i-GELU in float: x/2 (1 + L(x/sqrt2)), L(x) = sgn(x)[a (clip(|x|, max=-b) + b)^2 + 1]."""
    u = x / math.sqrt(2)
    erf = torch.sign(u) * (GELU_A * (torch.clamp(u.abs(), max=-GELU_B) + GELU_B) ** 2 + 1)
    return x / 2 * (1 + erf)


def i_exp_float(x: Tensor) -> Tensor:
    """The paper's i-exp in float for x <= 0: x = -ln2 z + p, p in (-ln2, 0], exp(x) ~ (a p^2 + b p + c) / 2^z.

    Coefficients of the reference code (a = 0.35815147, b = 0.96963238, c = 1).
    """
    ln2 = math.log(2)
    z = torch.floor(-x / ln2)
    p = x + z * ln2
    return (EXP_A * (p**2 + EXP_B * p + EXP_C)) / 2**z


def _gelu(x: Tensor) -> Tensor:
    return x / 2 * (1 + torch.erf(x / math.sqrt(2)))


def gelu_approximation_errors(grid_points: int = 801) -> dict[str, dict[str, float]]:
    """I-BERT Table 1: distance of each GELU approximation from the exact (erf) GELU on [-4, 4].

    Definition that reproduces the paper (all six numbers to two significant digits): over the uniform
    grid ``linspace(-4, 4, grid_points)`` (default 801 points, step 0.01), ``L2`` is the root-mean-square
    error sqrt(mean((f - GELU)^2)) (= sqrt of the integral of the squared error divided by the interval
    length 8) and ``Linf`` is max |f - GELU| on the grid. Values at the default grid: sigmoid 0.0118 /
    0.0203, h-GELU 0.0306 / 0.0679, i-GELU 0.00818 / 0.0182 (paper: 0.012 / 0.020, 0.031 / 0.068, 0.0082 /
    0.018). sqrt(sum of squares) grows with the grid and sqrt(integral) is sqrt(8) x RMS (0.033, 0.087,
    0.023): neither matches. h-GELU's L-infinity needs the grid: its supremum 0.0687 (at the ReLU6 kink
    x = 3/1.702) rounds to 0.069; a step-0.01 grid misses the kink by 0.007 and gives the paper's 0.068.
    Keys: ``sigmoid_gelu``, ``h_gelu``, ``i_gelu``, each ``{"L2": ..., "Linf": ...}``.
    """
    x = torch.linspace(-4.0, 4.0, grid_points, dtype=torch.float64)
    exact = _gelu(x)
    out = {}
    for name, fn in (("sigmoid_gelu", sigmoid_gelu), ("h_gelu", h_gelu), ("i_gelu", i_gelu_float)):
        err = fn(x) - exact
        out[name] = {"L2": float(err.pow(2).mean().sqrt()), "Linf": float(err.abs().max())}
    return out


def i_exp_max_error(grid_points: int = 100_001, x_min: float = -math.log(2)) -> float:
    """Max |i-exp(x) - exp(x)| over ``linspace(x_min, 0, grid_points)`` (float form, ``i_exp_float``).

    The paper's 1.9e-3 is the polynomial's error on its interval p in (-ln2, 0] (the default range): for
    x = -ln2 z + p the error is the polynomial's divided by 2^z, so the maximum over any x <= 0 is the same.
    With the code's coefficients it is 1.913e-3 (at p = -0.140); with the paper's printed, rounded ones
    (0.3585 (p + 1.353)^2 + 0.344) it would be 2.13e-3.
    """
    x = torch.linspace(x_min, 0.0, grid_points, dtype=torch.float64)
    return float((i_exp_float(x) - torch.exp(x)).abs().max())
