"""AdaptivFloat against its definition: the value set, rounding, saturation, zero, codes, quantizers, gradient.

The definition (Tambe et al. 2020; EdgeBERT's ``AdpfloatType``): value = (-1)^s · 2^(E + b) · (1 + M / 2^m),
E in [0, 2^e - 1], M in [0, 2^m - 1], m = n - 1 - e, no denormals, the code E = 0, M = 0 is zero; the bias b puts
the tensor's max |x| in the top binade. Expected values here are built from that formula with Python floats
(``math.ldexp``), never from lowbit's functions.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lowbit.algorithms.adaptivfloat import (
    AdaptivFloatActivationQuantizer,
    AdaptivFloatWeightQuantizer,
    adaptivfloat_quantize,
    adaptivfloat_values,
    decode,
    encode,
    exponent_bias,
)
from lowbit.quant import PerRow

FORMATS = [(n, e) for n in range(4, 9) for e in range(1, n)]


def definition_values(bits: int, exp_bits: int, bias: int) -> list[float]:
    """Every representable value, enumerated from the formula (sign x exponent x mantissa), zero once."""
    m = bits - 1 - exp_bits
    out = {0.0}
    for s, e_field, mant in itertools.product((1, -1), range(2**exp_bits), range(2**m)):
        if e_field == 0 and mant == 0:
            continue  # reserved for zero
        out.add(s * math.ldexp(1 + mant / 2**m, e_field + bias))
    return sorted(out)


def smallest_largest(bits: int, exp_bits: int, bias: int) -> tuple[float, float]:
    m = bits - 1 - exp_bits
    return math.ldexp(1 + 2**-m, bias), math.ldexp(2 - 2**-m, bias + 2**exp_bits - 1)


@pytest.mark.parametrize("bits,exp_bits", FORMATS)
@pytest.mark.parametrize("top", [-5, 0, 3, 10])  # the top binade's exponent: bias = top - (2^e - 1)
def test_value_set_is_the_definition(bits, exp_bits, top):
    bias = top - (2**exp_bits - 1)
    expected = definition_values(bits, exp_bits, bias)
    values = adaptivfloat_values(bits, exp_bits, bias)
    assert len(expected) == 2**bits - 1  # 2^n codes, the two zeros (+0, -0) one value
    assert values.tolist() == expected


def _nearest(x: torch.Tensor, grid: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest grid value, whether it is unique) per element, by brute force in float64."""
    g = torch.tensor(grid, dtype=torch.float64)
    d = (x.double().reshape(-1, 1) - g).abs()
    best = d.min(1, keepdim=True).values
    unique = (d == best).sum(1) == 1
    return g[d.argmin(1)].reshape(x.shape), unique.reshape(x.shape)


@pytest.mark.parametrize("bits,exp_bits", FORMATS)
def test_round_to_nearest_representable_value(bits, exp_bits):
    torch.manual_seed(bits * 10 + exp_bits)
    # magnitudes over many binades (log-normal), so the low binades and the zero rule are exercised too
    x = torch.randn(4000) * torch.exp(torch.randn(4000) * 2)
    bias = math.frexp(float(x.abs().max()))[1] - 1 - (2**exp_bits - 1)
    q = adaptivfloat_quantize(x, bits, exp_bits)
    nearest, unique = _nearest(x, definition_values(bits, exp_bits, bias))
    assert unique.float().mean() > 0.99
    assert torch.equal(q.double()[unique], nearest[unique])


@pytest.mark.parametrize("bits,exp_bits", [(8, 3), (6, 2), (4, 3), (5, 1)])
def test_bias_puts_max_abs_in_the_top_binade(bits, exp_bits):
    torch.manual_seed(0)
    for amax in [1.0, 0.75, 2.0**-7, 3.999, 1000.0, 1e-5]:
        x = torch.rand(50) * amax
        x[7] = -amax
        expected = math.floor(math.log2(amax)) - (2**exp_bits - 1)
        assert int(exponent_bias(x.abs().max().reshape(1), exp_bits)) == expected
        q = adaptivfloat_quantize(x, bits, exp_bits)
        # the max lands in the top binade: |q| of it is in [2^(b + 2^e - 1), largest]
        top = abs(float(q[7]))
        assert math.ldexp(1, expected + 2**exp_bits - 1) <= top <= smallest_largest(bits, exp_bits, expected)[1]


@pytest.mark.parametrize("bits,exp_bits", [(8, 3), (6, 2), (4, 1)])
def test_saturates_at_the_largest_value(bits, exp_bits):
    bias = -4
    largest = smallest_largest(bits, exp_bits, bias)[1]
    top = math.ldexp(1, bias + 2**exp_bits)  # 2^(top exponent + 1): above every value
    x = torch.tensor([largest, (largest + top) / 2, top * 0.999, top * 5, -top * 5])
    q = adaptivfloat_quantize(x, bits, exp_bits, exp_bias=bias)
    assert q.tolist() == [largest, largest, largest, largest, -largest]


@pytest.mark.parametrize("bits,exp_bits", [(8, 3), (6, 2), (4, 3), (5, 1)])
def test_no_denormals_below_half_the_smallest_is_zero_above_it_the_smallest(bits, exp_bits):
    bias = -6
    smallest = smallest_largest(bits, exp_bits, bias)[0]
    fractions = [0.0, 0.1, 0.49, 0.4999999, 0.5, 0.5000001, 0.75, 0.999, 1.0]
    x = torch.tensor([f * smallest for f in fractions] + [-0.49 * smallest, -0.6 * smallest])
    q = adaptivfloat_quantize(x, bits, exp_bits, exp_bias=bias)
    expected = [0.0] * 4 + [smallest] * 5 + [0.0, -smallest]
    assert q.tolist() == expected
    # the smallest binade has no value at 2^b (that code is zero): 2^b itself goes to the smallest
    assert adaptivfloat_quantize(torch.tensor([math.ldexp(1, bias)]), bits, exp_bits, exp_bias=bias).item() == smallest


@pytest.mark.parametrize("bits,exp_bits", [(8, 3), (6, 2), (7, 4)])
def test_mantissa_ties_round_half_to_even(bits, exp_bits):
    bias = -3
    m = bits - 1 - exp_bits
    values = [v for v in definition_values(bits, exp_bits, bias) if v > 0]
    smallest = values[0]
    ties, expected = [], []
    for lo, hi in itertools.pairwise(values):
        ties.append((lo + hi) / 2)  # exact in float32: one more bit than the format's mantissa
        # the even one of the two: mantissa field M even (2^k · 1.0 has M = 0, even)
        frac_lo = math.frexp(lo)[0] * 2 - 1  # M / 2^m of lo
        even_lo = round(frac_lo * 2**m) % 2 == 0
        expected.append(lo if even_lo else hi)
    x = torch.tensor(ties)
    q = adaptivfloat_quantize(x, bits, exp_bits, exp_bias=bias)
    assert q.tolist() == expected
    assert smallest == math.ldexp(1 + 2**-m, bias)


def test_ties_between_binades_go_up_to_the_power_of_two():
    bits, exp_bits, bias = 8, 3, 0  # m = 4
    below = math.ldexp(2 - 2**-4, 2)  # the largest value of binade 2
    tie = (below + 8.0) / 2
    assert adaptivfloat_quantize(torch.tensor([tie, -tie]), bits, exp_bits, exp_bias=bias).tolist() == [8.0, -8.0]


@pytest.mark.parametrize("bits,exp_bits", FORMATS)
def test_codes_are_sign_exponent_mantissa_fields(bits, exp_bits):
    bias = -5
    m = bits - 1 - exp_bits
    codes = torch.arange(2**bits).reshape(1, -1)
    values = decode(codes, bits, exp_bits, torch.tensor([bias])).reshape(-1).tolist()
    for code, value in enumerate(values):
        s, e_field, mant = code >> (bits - 1), (code >> m) & (2**exp_bits - 1), code & (2**m - 1)
        expected = 0.0 if e_field == 0 and mant == 0 else (-1) ** s * math.ldexp(1 + mant / 2**m, e_field + bias)
        assert value == expected, code
    grid = adaptivfloat_values(bits, exp_bits, bias).reshape(1, -1)
    enc = encode(grid, bits, exp_bits, torch.tensor([bias]))
    assert sorted(enc.reshape(-1).tolist()) == [c for c in range(2**bits) if c != 2 ** (bits - 1)]  # no -0
    assert torch.equal(decode(enc, bits, exp_bits, torch.tensor([bias])), grid)


def test_quantizing_twice_changes_nothing_and_keeps_the_bias():
    torch.manual_seed(0)
    for bits, exp_bits in FORMATS:
        x = torch.randn(300) * 0.05
        q = adaptivfloat_quantize(x, bits, exp_bits)
        assert torch.equal(adaptivfloat_quantize(q, bits, exp_bits), q)
        assert torch.equal(exponent_bias(q.abs().max().reshape(1), exp_bits),
                           exponent_bias(x.abs().max().reshape(1), exp_bits))


def test_weight_quantizer_per_tensor_and_per_row_and_straight_through_gradient():
    torch.manual_seed(0)
    w = (torch.randn(6, 40) * torch.logspace(-3, 1, 6).unsqueeze(1)).requires_grad_()
    q = AdaptivFloatWeightQuantizer(8, 3)(w)
    assert torch.equal(q.detach(), adaptivfloat_quantize(w.detach(), 8, 3))
    (q * torch.arange(240.0).reshape(6, 40)).sum().backward()
    assert torch.equal(w.grad, torch.arange(240.0).reshape(6, 40))  # identity
    per_row = AdaptivFloatWeightQuantizer(6, 2, PerRow())
    qr = per_row(w.detach())
    for i in range(6):
        assert torch.equal(qr[i], adaptivfloat_quantize(w.detach()[i], 6, 2))
    qp = per_row.qparams(w.detach())
    assert qp.kind == "adaptivfloat" and qp.n_ranges == 6 and qp.range_bits() == 6 * 16
    expected_bias = [math.floor(math.log2(float(r.abs().max()))) - 3 for r in w.detach()]
    assert qp.exp_bias.tolist() == expected_bias
    assert torch.equal(qp.dequantize(qp.codes(qr)), qr)


def test_pruned_zeros_stay_zero_and_the_bias_comes_from_the_survivors():
    torch.manual_seed(0)
    w = torch.randn(16, 16)
    keep = w.abs() < 1.0  # prune the largest: the bias must follow the survivors' max
    q = AdaptivFloatWeightQuantizer(8, 3)(w * keep)
    assert (q[~keep] == 0).all()
    assert torch.equal(q, adaptivfloat_quantize((w * keep), 8, 3))
    assert int(AdaptivFloatWeightQuantizer(8, 3).qparams(w * keep).exp_bias) == \
        math.floor(math.log2(float((w * keep).abs().max()))) - 7


def test_activation_quantizer_is_dynamic_keeps_dtype_and_clips():
    torch.manual_seed(0)
    act = AdaptivFloatActivationQuantizer(8, 3)
    for scale in (0.01, 10.0):  # the bias follows each forward
        x = torch.randn(4, 5, 8) * scale
        assert torch.equal(act(x), adaptivfloat_quantize(x, 8, 3))
    x = torch.randn(4, 8).bfloat16()
    out = act(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out.float(), adaptivfloat_quantize(x.float(), 8, 3))
    clipped = AdaptivFloatActivationQuantizer(8, 3, clip=1.0)
    x = torch.tensor([[-3.0, -0.3, 0.2, 0.9, 2.0]], requires_grad=True)
    y = clipped(x)
    assert torch.equal(y.detach(), adaptivfloat_quantize(x.detach().clamp(-1, 1), 8, 3))
    y.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]


@pytest.mark.parametrize("block", [7, 1 << 14])
def test_blocked_evaluation_equals_the_definition_per_tensor_and_per_row(block, monkeypatch):
    """The quantizer runs in blocks of elements (per tensor) or of rows (per row): every block gives the nearest
    value of its own range's grid, across block boundaries."""
    from lowbit.algorithms.adaptivfloat import functional

    monkeypatch.setattr(functional, "BLOCK", block)
    torch.manual_seed(block)
    x = torch.randn(40_000) * torch.exp(torch.randn(40_000))
    bias = math.frexp(float(x.abs().max()))[1] - 1 - 7
    nearest, unique = _nearest(x, definition_values(8, 3, bias))
    assert torch.equal(adaptivfloat_quantize(x, 8, 3).double()[unique], nearest[unique])
    rows = torch.randn(300, 200) * torch.logspace(-4, 2, 300).unsqueeze(1)
    q = AdaptivFloatWeightQuantizer(6, 2, PerRow())(rows)
    for i in range(0, 300, 37):
        row_bias = math.frexp(float(rows[i].abs().max()))[1] - 1 - 3
        nearest, unique = _nearest(rows[i], definition_values(6, 2, row_bias))
        assert torch.equal(q[i].double()[unique], nearest[unique]), i
