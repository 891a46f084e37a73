"""I-BERT integer kernels (``lowbit.algorithms.ibert.integer``) against the reference and the paper.

The reference is transformers' ``models/ibert/quant_modules.py`` (the official I-BERT numerics). Its modules
take *real* values ``x`` and divide by the scale to get the integers; they are run in float64 (``.double()``)
because in float32 neither ``codes * scale`` nor the later products (exp codes ~2^50, 32-bit accumulators)
are exact. Input scales are float32 numbers carried in float64: then ``codes * scale`` is exact for
|codes| < 2^29 and the reference's ``x / scale`` gives back exactly the codes (with a general float64 scale
about 11% of (code, scale) pairs have no float64 x with x / scale == code, and the reference would work on a
non-integer). Scales the reference computes itself (requantization ratios, QuantAct scales) are arbitrary.
Bit-exact comparisons use ``torch.equal``. Where lowbit deliberately differs (the integer module docstring,
"Where lowbit deliberately differs"), the test spells out the difference exactly.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn
from transformers.models.ibert import quant_modules as Q

from lowbit.algorithms.ibert import integer as I

F64 = torch.float64
# QuantAct's buffers start at -/+1e-5 in float32 (``self.x_min -= 1e-5``); ``.double()`` keeps that value
F32_1E5 = torch.tensor(1e-5, dtype=torch.float32).to(F64)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def f32_scale(g: torch.Generator, lo: float, hi: float, shape=(1,)) -> torch.Tensor:
    """exp(U(lo, hi)) rounded to float32, as float64: codes * scale is exact for |codes| < 2^29."""
    return torch.exp(torch.empty(shape, dtype=F64).uniform_(lo, hi, generator=g)).float().to(F64)


def any_scale(g: torch.Generator, lo: float, hi: float, shape=(1,)) -> torch.Tensor:
    return torch.exp(torch.empty(shape, dtype=F64).uniform_(lo, hi, generator=g))


def randint(g: torch.Generator, lo: int, hi: int, shape) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=g).to(F64)


def real_values(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """codes * scale, checked to give back exactly the codes under the reference's ``x / scale``."""
    x = codes * scale
    assert torch.equal(x / scale, codes)
    return x


def same(a, b) -> bool:
    """Bit-equal values (a 0-dim scale and the reference's shape-(1,) one compare equal)."""
    a, b = torch.broadcast_tensors(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64))
    return torch.equal(a, b)


def check_codes(ref_value: torch.Tensor, ref_scale, codes: torch.Tensor, scale: torch.Tensor):
    """The reference returns ``codes * scale`` and the scale: same scale, same product, bit for bit."""
    assert same(ref_scale, scale)
    assert torch.equal(ref_value, codes * scale)


# ---------------------------------------------------------------------------------------------------------
# 1. GELU, exp, softmax, requantization, linear: bit-exact


def test_int_gelu_bit_exact_with_intgelu():
    g = gen(0)
    for _ in range(40):
        scale = f32_scale(g, -14, 0)
        codes = randint(g, -(2**20), 2**20, (8, 6, 32))
        codes[0, 0, :5] = torch.tensor([0.0, 1.0, -1.0, 2**20 - 1, -(2**20)])
        ref_value, ref_scale = Q.IntGELU(quant_mode=True)(real_values(codes, scale), scale)
        out, out_scale = I.int_gelu(codes, scale)
        # deliberate: lowbit's scale is the reference's negated (positive), codes negated too; same product
        assert torch.equal(out_scale, -ref_scale) and bool((out_scale > 0).all())
        assert torch.equal(out * out_scale, ref_value)
        assert torch.equal(out, torch.floor(out))


def test_int_exp_bit_exact_with_intsoftmax_int_exp():
    g = gen(1)
    ref = Q.IntSoftmax(8, quant_mode=True)
    for _ in range(40):
        scale = any_scale(g, -12, 0)  # int_exp takes the codes directly: any float64 scale
        x0_int = math.floor(-0.6931 / float(scale))
        codes = -randint(g, 0, 40 * abs(x0_int) + 2, (16, 40))  # beyond the 30 x0_int cap too
        codes[0, :3] = torch.tensor([0.0, -1.0, 30.0 * x0_int])
        ref_codes, ref_scale = ref.int_exp(codes, scale)
        out, out_scale = I.int_exp(codes, scale)
        assert torch.equal(out, ref_codes) and torch.equal(out_scale, ref_scale)


class _RealValuedAct(nn.Module):
    """The reference's inner QuantAct(16), given the real exp values exp_int * S_exp instead of the codes.

    Stock ``IntSoftmax`` calls ``self.act(exp_int, exp_scaling_factor)``: the codes in place of the values
    (``FixedPointMul`` then divides them by S_exp once more). lowbit requantizes the codes at their scale;
    with this wrapper the reference does the same, with its own QuantAct and FixedPointMul.
    """

    def __init__(self, act: Q.QuantAct):
        super().__init__()
        self.act = act

    def forward(self, exp_int, exp_scaling_factor):
        return self.act(exp_int * exp_scaling_factor, exp_scaling_factor)


class QuantActObserver:
    """exp_scale_fn reproducing QuantAct's running stats in training (float64 module), call by call.

    First call: x_min = -1e-5 + min(x), x_max = 1e-5 + max(x) (the buffers start at -/+1e-5 and the batch is
    added); later calls: EMA with momentum 0.95. Scale max(|x_min|, |x_max|) clamped at 1e-8, / (2^15 - 1).
    """

    def __init__(self, momentum: float = 0.95):
        self.momentum, self.x_min, self.x_max = momentum, None, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.min(), x.max()
        if self.x_min is None:
            self.x_min, self.x_max = -F32_1E5 + lo, F32_1E5 + hi
        else:
            self.x_min = self.x_min * self.momentum + lo * (1 - self.momentum)
            self.x_max = self.x_max * self.momentum + hi * (1 - self.momentum)
        return I.symmetric_scale(torch.maximum(self.x_min.abs(), self.x_max.abs()), 16)


def reference_softmax(training: bool) -> Q.IntSoftmax:
    ref = Q.IntSoftmax(8, quant_mode=True).double()
    ref.act = _RealValuedAct(ref.act)
    return ref.train(training)


def test_int_softmax_bit_exact_eval_with_calibrated_quantact():
    """Evaluation: the inner QuantAct(16) uses its calibrated range; exp_scale_fn returns the same scale.

    The range is set so that the 16-bit scale is a float32 number: the reference re-derives the codes as
    (q * S16) / S16, exact then (with a long-mantissa S16 it is one ulp off for some q).
    """
    g = gen(2)
    for _ in range(60):
        scale = f32_scale(g, -9, -1)
        codes = randint(g, -(2**15) + 1, 2**15, (4, 3, 24))
        codes[0, 0] = -(2**15) + 1  # a row at the grid minimum (masked keys)
        s16 = f32_scale(g, math.log(0.5 / 32767), math.log(4 / 32767))  # some saturate at 32767
        ref = reference_softmax(training=False)
        ref.act.act.x_min.fill_(0.0)
        ref.act.act.x_max.copy_(s16 * 32767)
        ref_value, ref_scale = ref(real_values(codes, scale), scale)
        state = ref.act.act
        out, out_scale = I.int_softmax(
            codes, scale, 8,
            exp_scale_fn=lambda v, act=state: I.symmetric_scale(torch.maximum(act.x_min.abs(), act.x_max.abs()), 16))
        assert same(state.act_scaling_factor, s16)
        check_codes(ref_value, ref_scale, out, out_scale)


def test_int_softmax_bit_exact_training_running_stats():
    """Training: QuantAct's running stats (first call, then EMA) reproduced by the caller's exp_scale_fn."""
    g = gen(3)
    for _ in range(10):
        ref, observer = reference_softmax(training=True), QuantActObserver()
        for _call in range(3):
            scale = f32_scale(g, -9, -1)
            codes = randint(g, -(2**15) + 1, 2**15, (4, 3, 24))
            ref_value, ref_scale = ref(real_values(codes, scale), scale)
            out, out_scale = I.int_softmax(codes, scale, 8, exp_scale_fn=observer)
            assert same(ref.act.act.act_scaling_factor, I.symmetric_scale(
                torch.maximum(observer.x_min.abs(), observer.x_max.abs()), 16))
            check_codes(ref_value, ref_scale, out, out_scale)


def test_int_softmax_default_scale_is_this_calls_max():
    """exp_scale_fn=None: max|exp| of this call / (2^15 - 1), the QuantAct range set to this batch's exp."""
    g = gen(4)
    for _ in range(20):
        scale = f32_scale(g, -9, -1)
        codes = randint(g, -(2**15) + 1, 2**15, (4, 3, 16))
        ref = reference_softmax(training=False)
        exp_int, exp_scale = ref.int_exp(codes - codes.max(dim=-1, keepdim=True).values, scale)
        exp_max = (exp_int * exp_scale).abs().max()
        ref.act.act.x_min.fill_(0.0)
        ref.act.act.x_max.fill_(exp_max)
        ref_value, ref_scale = ref(real_values(codes, scale), scale)
        check_codes(ref_value, ref_scale, *I.int_softmax(codes, scale))


def test_int_softmax_vs_stock_reference_differs_by_rounding_only():
    """The stock reference feeds the exp codes to QuantAct(16) as values (deliberate difference 4).

    Its 16-bit step is round(round(q / S_exp) * dyadic(S_exp / A)) with A observed on codes; lowbit's is
    round(q * dyadic(S_exp / S16)), S16 = A * S_exp. The 16-bit codes agree up to +-1 (31-bit mantissa and
    float32 scale rounding); after the normalisation to 8 bits almost every output is equal.
    """
    g = gen(5)
    total = different = 0
    for _ in range(8):
        scale = f32_scale(g, -9, -1)
        codes = randint(g, -(2**13), 2**13, (8, 4, 32))
        ref = Q.IntSoftmax(8, quant_mode=True).double().train()
        seen = {}
        ref.act.register_forward_hook(lambda m, args, out, seen=seen: seen.update(q16=out[0] / out[1]))
        ref_value, ref_scale = ref(real_values(codes, scale), scale)
        a = ref.act.act_scaling_factor  # observed on codes: (1e-5 + max exp_int) / 32767
        exp_int, exp_scale = I.int_exp(codes - codes.max(dim=-1, keepdim=True).values, scale)
        q16 = I.requantize(exp_int, exp_scale, a * exp_scale, 16)
        assert float((q16 - seen["q16"]).abs().max()) < 1 + 1e-6
        out, _ = I.int_softmax(codes, scale, 8, exp_scale_fn=lambda v, s16=a * exp_scale: s16)
        diff = (out - ref_value / ref_scale).abs()
        assert float(diff.max()) <= 1
        total, different = total + diff.numel(), different + int((diff > 0).sum())
    assert different / total < 1e-3


def reference_fixed_point_mul(codes, s_in, bits, s_out, res=None, s_res=None):
    pre_act = codes * s_in
    identity = None if res is None else res * s_res
    return Q.FixedPointMul.apply(pre_act, s_in, bits, s_out, identity, s_res).to(F64)


@pytest.mark.parametrize("bits", [4, 8, 16, 22, 24])
def test_requantize_bit_exact_with_fixed_point_mul(bits):
    g = gen(10 + bits)
    for trial in range(30):
        per_channel = trial % 2 == 1
        s_in = any_scale(g, -12, -2, (24,) if per_channel else (1,))
        s_out = any_scale(g, -6, 0)
        codes = randint(g, -(2**31), 2**31, (3, 5, 24)) if trial % 3 else randint(g, -(2**15), 2**15, (3, 5, 24))
        ref = reference_fixed_point_mul(codes, s_in, bits, s_out)
        assert torch.equal(I.requantize(codes, s_in, s_out, bits), ref)
        res, s_res = randint(g, -(2**20), 2**20, (3, 5, 24)), any_scale(g, -10, -4)
        ref = reference_fixed_point_mul(codes, s_in, bits, s_out, res, s_res)
        assert torch.equal(I.requantize(codes, s_in, s_out, bits, res, s_res), ref)


def test_requantize_in_quantact_and_its_float32_cast():
    g = gen(20)
    act = Q.QuantAct(8, quant_mode=True).double().eval()
    for _ in range(6):
        s_in, lo, hi = any_scale(g, -12, -4), -any_scale(g, -2, 1), any_scale(g, -2, 1)
        codes = randint(g, -(2**24), 2**24, (2, 7, 16))
        res, s_res = randint(g, -127, 128, (2, 7, 16)), any_scale(g, -6, -2)
        ref_value, ref_scale = act(codes * s_in, s_in, res * s_res, s_res, specified_min=lo, specified_max=hi)
        s_out = I.symmetric_scale(torch.maximum(lo.abs(), hi.abs()), 8)
        check_codes(ref_value, ref_scale, I.requantize(codes, s_in, s_out, 8, res, s_res), s_out)
    # deliberate difference 6: above 24 bits the reference's float32 cast rounds the codes, lowbit's are exact
    codes, one = torch.tensor([[[2.0**24 + 1]]], dtype=F64), torch.ones(1, dtype=F64)
    assert float(reference_fixed_point_mul(codes, one, 32, one)) == 2.0**24
    assert float(I.requantize(codes, one, one, 32)) == 2.0**24 + 1


def test_batch_frexp_equals_reference():
    g = gen(21)
    ratio = any_scale(g, -60, 60, (4000,)) * torch.where(torch.rand(4000, generator=g) < 0.5, -1.0, 1.0).to(F64)
    ties = torch.tensor([1 + 2.0**-31, 1 + 3 * 2.0**-31, 0.75 + 2.0**-32, 1 - 2.0**-33, 2.0**-30, 0.0], dtype=F64)
    ratio = torch.cat([ratio, ties, -ties])
    for max_bit in (31, 16):
        m, e = I.batch_frexp(ratio, max_bit)
        m_ref, e_ref = Q.batch_frexp(ratio, max_bit)
        assert m.dtype == m_ref.dtype and e.dtype == e_ref.dtype
        assert torch.equal(m, m_ref) and torch.equal(e, e_ref)


def test_linear_int_bit_exact_with_quantlinear():
    g = gen(22)
    for _ in range(20):
        n_in, n_out = 48, 20
        layer = Q.QuantLinear(n_in, n_out, bias=True, weight_bit=8, bias_bit=32, per_channel=True,
                              quant_mode=True).double()
        w = torch.randn(n_out, n_in, generator=g, dtype=F64) * 0.05
        # each row's max|w| at a negative entry and no positive one rounding to 127, so both grids agree
        # (the +127 -> 126 clip is test 3)
        absmax = w.abs().amax(dim=1, keepdim=True)
        w = torch.where(w.abs() == absmax, -absmax, torch.minimum(w, 0.99 * absmax))
        b = torch.randn(n_out, generator=g, dtype=F64) * 0.1
        with torch.no_grad():
            layer.weight.copy_(w), layer.bias.copy_(b)
        x_scale = f32_scale(g, -8, -2)
        x_codes = randint(g, -127, 128, (3, 5, n_in))
        ref_value, ref_scale = layer(real_values(x_codes, x_scale), x_scale)
        w_codes, w_scale = I.quantize_weight_per_channel(w)
        b_codes = I.quantize_bias(b, w_scale * x_scale)
        assert torch.equal(w_codes, layer.weight_integer) and torch.equal(b_codes, layer.bias_integer)
        acc, acc_scale = I.linear_int(x_codes, x_scale, w_codes, w_scale, b_codes)
        check_codes(ref_value, ref_scale, acc, acc_scale)
        acc_no_bias, _ = I.linear_int(x_codes, x_scale.reshape(()), w_codes, w_scale)
        assert torch.equal(acc_no_bias + b_codes, acc)


# ---------------------------------------------------------------------------------------------------------
# 2. LayerNorm and isqrt


def reference_layernorm(n: int, weight, bias, shift: int, training: bool) -> Q.IntLayerNorm:
    ln = Q.IntLayerNorm(n, 1e-12, quant_mode=True).double().train(training)
    with torch.no_grad():
        ln.weight.copy_(weight), ln.bias.copy_(bias), ln.shift.fill_(shift)
    ln.dim_sqrt = torch.sqrt(torch.tensor(n, dtype=torch.float))  # as its first forward sets it
    return ln


def math_isqrt_torch(monkeypatch, module):
    """Patch the reference module's ``torch.sqrt`` with an exact integer square root (``math.isqrt``)."""
    proxy = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})

    def sqrt(t):
        assert torch.equal(t, torch.floor(t)), "the patched sqrt is only for integer variances"
        return torch.tensor([math.isqrt(int(v)) for v in t.flatten().tolist()], dtype=t.dtype).reshape(t.shape)

    proxy.sqrt = sqrt
    monkeypatch.setattr(module, "torch", proxy)


def ln_params(g, n):
    weight = torch.randn(n, generator=g, dtype=F64)
    return weight, torch.randn(n, generator=g, dtype=F64) * 0.5


def test_int_layernorm_bit_exact_with_intlayernorm():
    """var < 2^32 (shift from layernorm_shift): float floor(sqrt) is exact there, the stock reference is equal."""
    g = gen(30)
    for trial in range(45):
        n = [16, 48, 96][trial % 3]
        scale = f32_scale(g, -12, -2)
        bits = [8, 16, 22][trial % 3]
        codes = randint(g, -(2 ** (bits - 1)) + 1, 2 ** (bits - 1), (2, 5, n))
        weight, bias = ln_params(g, n)
        shift = I.layernorm_shift(codes, 0)
        ref = reference_layernorm(n, weight, bias, shift, training=False)
        ref_value, ref_scale = ref(real_values(codes, scale), scale)
        out, out_scale = I.int_layernorm(codes, scale, weight, bias, shift)
        check_codes(ref_value, ref_scale, out, out_scale)


def test_int_layernorm_training_overflow_fallback_and_set_shift():
    """The reference in training grows its shift on overflow; layernorm_shift and int_layernorm agree."""
    g = gen(31)
    for trial in range(36):
        n = [32, 64, 128][trial % 3]
        scale = f32_scale(g, -12, -2)
        mag = [2**10, 2**16, 2**21, 2**26][trial % 4]
        codes = randint(g, -mag, mag, (2, 4, n))
        weight, bias = ln_params(g, n)
        start = trial % 3
        ref = reference_layernorm(n, weight, bias, start, training=True)
        ref_value, ref_scale = ref(real_values(codes, scale), scale)
        assert I.layernorm_shift(codes, start) == int(ref.shift)
        check_codes(ref_value, ref_scale, *I.int_layernorm(codes, scale, weight, bias, start))
    # at exact powers of 4 * 2^32 the shift is exact: var = 4 a^2 per row with a = 2^(15 + k)
    for k in range(8):
        a = 2.0 ** (15 + k)
        codes = torch.tensor([[[a, -a, a, -a] + [0.0] * 4]], dtype=F64)
        ref = reference_layernorm(8, torch.ones(8, dtype=F64), torch.zeros(8, dtype=F64), 0, training=True)
        ref(codes, torch.ones(1, dtype=F64))
        assert I.layernorm_shift(codes, 0) == int(ref.shift) == k
        bump = codes.clone()
        bump[0, 0, 4:6] = torch.tensor([1.0, -1.0])
        ref = reference_layernorm(8, torch.ones(8, dtype=F64), torch.zeros(8, dtype=F64), 0, training=True)
        ref(bump, torch.ones(1, dtype=F64))
        assert I.layernorm_shift(bump, 0) == int(ref.shift) == k + 1


def row_with_var(var: int, n: int) -> list[int]:
    """A row y with round(mean) = 0 and sum(y^2) = var: pairs (t, -t) (greedy squares) and a 1 if var is odd."""
    row, rest = [1] if var % 2 else [], var // 2
    while rest:
        t = math.isqrt(rest)
        row, rest = [*row, t, -t], rest - t * t
    assert len(row) <= n
    return row + [0] * (n - len(row))


def test_int_layernorm_is_reference_with_integer_sqrt(monkeypatch):
    """With the reference's floor(sqrt) replaced by math.isqrt the two are equal also where float sqrt errs.

    Rows with var = k^2 - 1 just below 2^53, k = floor(2^31 / m) + 1: float sqrt rounds up to k, so the
    reference's std is k instead of k - 1 and its factor floor(2^31 / std) is m - 1 instead of m.
    Shift 0 and max_bit 63 (no overflow fallback): the variances are far past 32 bits on purpose.
    """
    g = gen(32)
    n = 32
    rows = []
    for m in (23, 24, 25, 30):
        k = 2**31 // m + 1
        assert math.sqrt(k * k - 1) == k and math.isqrt(k * k - 1) == k - 1 and k * k < 2**53
        rows.append(row_with_var(k * k - 1, n))
    codes = torch.tensor(rows, dtype=F64).reshape(1, len(rows), n)
    codes = torch.cat([codes, randint(g, -(2**22), 2**22, (1, len(rows), n))], dim=0)
    scale = torch.ones(1, dtype=F64)
    weight, bias = ln_params(g, n)
    out, out_scale = I.int_layernorm(codes, scale, weight, bias, 0, max_bit=63)

    stock = reference_layernorm(n, weight, bias, 0, training=False)
    stock_value, _ = stock(codes, scale)
    assert not torch.equal(stock_value, out * out_scale)  # float floor(sqrt) is off on the k^2 - 1 rows

    math_isqrt_torch(monkeypatch, Q)
    patched = reference_layernorm(n, weight, bias, 0, training=False)
    check_codes(*patched(codes, scale), out, out_scale)


def test_int_layernorm_constant_row_is_finite():
    """Deliberate difference 2: var = 0 gives the reference 0 * inf = NaN; lowbit holds the root at >= 1."""
    codes = torch.full((1, 2, 8), 5.0, dtype=F64)
    codes[0, 1, 0] = 6.0
    weight, bias = torch.ones(8, dtype=F64), torch.zeros(8, dtype=F64)
    ref_value, _ = reference_layernorm(8, weight, bias, 0, training=False)(codes, torch.ones(1, dtype=F64))
    out, out_scale = I.int_layernorm(codes, torch.ones(1, dtype=F64), weight, bias, 0)
    assert torch.isnan(ref_value[0, 0]).all() and torch.isfinite(out).all()
    assert torch.equal(out[0, 1] * out_scale, ref_value[0, 1])


def isqrt_edge_cases() -> list[int]:
    values = {0, 1, 2, 3, 4, 2**62, 2**63 - 1}
    for k in range(63):
        values |= {2**k - 1, 2**k, 2**k + 1}
    r = math.isqrt(2**63 - 1)  # (2^31.5)^2 = 2^63: the largest square below it and its neighbours
    values |= {r * r - 1, r * r, r * r + 1, (r - 1) ** 2, 2**63 - 2}
    for m in (2**16, 2**26 + 1, 2**31 - 1, 2**31, 2**31 + 1, 94906265, r - 1, r):
        values |= {m * m - 1, m * m, m * m + 1}
    return sorted(v for v in values if 0 <= v < 2**63)


def test_isqrt_equals_math_isqrt():
    g = gen(40)
    edges = isqrt_edge_cases()
    random = torch.randint(0, 2**63 - 1, (100000,), generator=g) >> torch.randint(0, 63, (100000,), generator=g)
    squares = torch.randint(0, 3037000499, (2000,), generator=g) ** 2 + torch.randint(-1, 2, (2000,), generator=g)
    values = torch.cat([torch.tensor(edges), random, squares.clamp(min=0)])
    got = I.isqrt(values)
    assert got.dtype == torch.int64
    assert got.tolist() == [math.isqrt(v) for v in values.tolist()]
    # float64 integer values: same results, float64 out
    exact = values[values < 2**53]
    got_f = I.isqrt(exact.to(F64))
    assert got_f.dtype == F64 and got_f.to(torch.int64).tolist() == [math.isqrt(v) for v in exact.tolist()]
    with pytest.raises(ValueError):
        I.isqrt(torch.tensor([-1]))
    with pytest.raises(ValueError):
        I.isqrt(torch.tensor([2.5], dtype=F64))


def test_isqrt_uses_no_float_sqrt(monkeypatch):
    def no_sqrt(*args, **kwargs):
        raise AssertionError("float sqrt called")

    monkeypatch.setattr(torch, "sqrt", no_sqrt)
    monkeypatch.setattr(torch.Tensor, "sqrt", no_sqrt)
    monkeypatch.setattr(math, "sqrt", no_sqrt)
    assert I.isqrt(torch.tensor([2**63 - 1, 99])).tolist() == [3037000499, 9]


# ---------------------------------------------------------------------------------------------------------
# 3. Quantization codes: lowbit's grid keeps +(2^(b-1) - 1), the reference clips it to 2^(b-1) - 2


def reference_codes(x, bits, scale):
    return Q.SymmetricQuantFunction.apply(x, bits, False, scale)


def assert_equal_but_top_code(codes, ref, bits):
    """Equal everywhere except where lowbit has 2^(b-1) - 1 and the reference 2^(b-1) - 2 (and it happens)."""
    n = 2 ** (bits - 1) - 1
    assert bool((codes >= -n).all()) and bool((codes <= n).all())
    top = codes == n
    assert int(top.sum()) > 0
    assert bool((ref[top] == n - 1).all())
    assert torch.equal(codes[~top], ref[~top])


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_quantize_symmetric_codes_vs_symmetric_quant_function(bits):
    g = gen(50 + bits)
    for trial in range(8):
        x = torch.randn(6, 5, 40, generator=g, dtype=F64) * float(any_scale(g, -4, 4))
        absmax = x.abs().max() * [1.0, 0.5][trial % 2]  # 0.5: both ends saturate
        scale = I.symmetric_scale(absmax, bits)
        assert torch.equal(scale, Q.symmetric_linear_quantization_params(bits, -absmax, absmax))
        x[0, 0, 0] = absmax  # +max|x| is on the grid's top
        codes = I.quantize_symmetric(x, scale, bits)
        assert_equal_but_top_code(codes, reference_codes(x, bits, scale.reshape(1)), bits)
        # per channel over the last dim (the reference views a 3-D input's scale as [-1])
        ch_scale = I.symmetric_scale(x.abs().amax(dim=(0, 1)), bits)
        codes = I.quantize_symmetric(x, ch_scale, bits)
        assert_equal_but_top_code(codes, reference_codes(x, bits, ch_scale), bits)
    half = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5], dtype=F64)  # .5 ties: half to even, as torch.round
    one = torch.ones((), dtype=F64)
    assert I.quantize_symmetric(half, one, 8).tolist() == reference_codes(half, 8, one.reshape(1)).tolist()


def test_quantize_symmetric_multiplies_by_the_reciprocal_as_the_reference():
    """Near .5 ties x * (1/S) and x / S round apart; lowbit follows the reference's ``1.0 / scale * x``."""
    g = gen(55)
    scale = any_scale(g, -8, 0, ())
    x = (torch.arange(-120, 120, dtype=F64) + 0.5) * scale
    for _ in range(3):  # the tie points and their float neighbours
        x = torch.cat([x, torch.nextafter(x, x + 1), torch.nextafter(x, x - 1)])
    assert bool((torch.round(x / scale) != torch.round(x * (1.0 / scale))).any())  # the test can tell them apart
    assert torch.equal(I.quantize_symmetric(x, scale, 8), reference_codes(x, 8, scale.reshape(1)))


def test_quantize_weight_per_channel_vs_quantlinear():
    g = gen(60)
    for trial in range(6):
        w = torch.randn(24, 40, generator=g, dtype=F64) * 0.1
        layer = Q.QuantLinear(40, 24, bias=True, weight_bit=8, per_channel=True, quant_mode=True).double()
        with torch.no_grad():
            layer.weight.copy_(w), layer.bias.zero_()
        layer(torch.zeros(1, 2, 40, dtype=F64), torch.ones(1, dtype=F64))
        codes, scale = I.quantize_weight_per_channel(w.float() if trial % 2 else w)  # float32 in: cast inside
        if trial % 2:
            continue  # float32 weights: lowbit quantizes their (rounded) values; nothing to compare
        assert torch.equal(scale, layer.fc_scaling_factor)
        assert_equal_but_top_code(codes, layer.weight_integer, 8)


# ---------------------------------------------------------------------------------------------------------
# 4. The paper's Table 1 and i-exp error


def two_sig(v: float) -> float:
    return float(f"{v:.2g}")


def test_table1_gelu_errors_match_paper():
    errors = I.gelu_approximation_errors()
    paper = {"sigmoid_gelu": (0.012, 0.020), "h_gelu": (0.031, 0.068), "i_gelu": (0.0082, 0.018)}
    assert set(errors) == set(paper)
    for name, (l2, linf) in paper.items():
        assert (two_sig(errors[name]["L2"]), two_sig(errors[name]["Linf"])) == (l2, linf), name


def test_float_forms_follow_their_definitions():
    x = torch.linspace(-5, 5, 1001, dtype=F64)
    assert torch.allclose(I.h_gelu(x), x * torch.clamp(1.702 * x + 3, 0, 6) / 6, rtol=0, atol=1e-15)
    assert torch.allclose(I.sigmoid_gelu(x), x / (1 + torch.exp(-1.702 * x)), rtol=0, atol=1e-15)
    u = (x / math.sqrt(2)).abs().clamp(max=1.769)
    erf = torch.sign(x) * (-0.2888 * (u - 1.769) ** 2 + 1)
    assert torch.allclose(I.i_gelu_float(x), x / 2 * (1 + erf), rtol=0, atol=1e-15)
    assert I.h_gelu(torch.ones(3)).dtype == torch.float32


def test_i_exp_max_error_is_the_papers():
    err = I.i_exp_max_error()
    assert two_sig(err) == 1.9e-3  # 1.913e-3: the paper's 1.9e-3 to two significant digits
    assert 1.85e-3 < err < 1.95e-3
    wide = I.i_exp_max_error(grid_points=400_001, x_min=-8.0)  # z > 0 only divides the error by 2^z
    assert abs(wide - err) < 1e-8
    x = torch.linspace(-10, 0, 100_001, dtype=F64)
    assert float((I.i_exp_float(x) - torch.exp(x)).abs().max()) <= err + 1e-9


# ---------------------------------------------------------------------------------------------------------
# 5. Gradients: straight-through floor/round


def test_floor_and_round_ste_pass_the_gradient_unchanged():
    x = torch.tensor([-2.5, -1.2, 0.3, 0.5, 1.5, 7.9], dtype=F64, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0, -1.0], dtype=F64)
    for fn, op in ((I.floor_ste, torch.floor), (I.round_ste, torch.round)):
        x.grad = None
        y = fn(x)
        assert torch.equal(y, op(x.detach()))
        y.backward(g)
        assert torch.equal(x.grad, g)


def test_int_gelu_and_int_softmax_gradients_finite_and_like_reference():
    g = gen(70)
    scale = f32_scale(g, -10, -6)
    codes = randint(g, -(2**15), 2**15, (2, 3, 16))
    # i-GELU: d/dcodes = d/dx * S (the reference differentiates w.r.t. the real input x = codes * S)
    q = codes.clone().float().requires_grad_()  # float32 in: cast to float64 inside, the graph kept
    out, out_scale = I.int_gelu(q, scale)
    (out * out_scale).sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    x = real_values(codes, scale).requires_grad_()
    Q.IntGELU(quant_mode=True)(x, scale)[0].sum().backward()
    assert torch.allclose(q.grad.double(), (x.grad * scale).float().double(), rtol=1e-5, atol=0)
    # i-softmax
    q = codes.clone().requires_grad_()
    out, out_scale = I.int_softmax(q, scale)
    weights = torch.randn(out.shape, generator=g, dtype=F64)
    (out * out_scale * weights).sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    ref = reference_softmax(training=False)
    exp_int, exp_scale = ref.int_exp(codes - codes.max(dim=-1, keepdim=True).values, scale)
    ref.act.act.x_min.fill_(0.0)
    ref.act.act.x_max.fill_((exp_int * exp_scale).abs().max())
    x = real_values(codes, scale).requires_grad_()
    (ref(x, scale)[0] * weights).sum().backward()
    # not bit-equal: the max subtraction sums the row's gradients into the max entry (cancellation)
    assert torch.allclose(q.grad, x.grad * scale, rtol=1e-9, atol=1e-6 * float(q.grad.abs().max()))


def test_requantize_and_layernorm_gradients():
    g = gen(71)
    codes = randint(g, -1000, 1000, (2, 8)).requires_grad_()
    res = randint(g, -100, 100, (2, 8)).requires_grad_()
    s_in, s_out, s_res = torch.tensor(0.01, dtype=F64), torch.tensor(0.3, dtype=F64), torch.tensor(0.07, dtype=F64)
    I.requantize(codes, s_in, s_out, 8, res, s_res).sum().backward()
    assert torch.allclose(codes.grad, torch.full_like(codes, 0.01 / 0.3))
    assert torch.allclose(res.grad, torch.full_like(res, 0.07 / 0.3))
    q = randint(g, -(2**21), 2**21, (2, 3, 32)).requires_grad_()
    weight = torch.randn(32, generator=g, dtype=F64).requires_grad_()
    out, out_scale = I.int_layernorm(q, torch.ones((), dtype=F64), weight, torch.zeros(32, dtype=F64),
                                     I.layernorm_shift(q.detach(), 0))
    (out * out_scale).sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(weight.grad).all()
