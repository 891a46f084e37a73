"""lowbit's AdaptivFloat against the authors' ``quantize_adaptivfloat`` (ttambe/AdaptivFloat, transcribed).

Both choose the top binade from max|x| and round the mantissa half to even, so inside the reference's exponent
range they agree bit for bit. lowbit follows the paper and EdgeBERT's hardware (``AdpfloatType``), where the
reference code differs, deliberately:

1. range: the reference uses 2^e - 2 binades (IEEE-style, exponent codes reserved); lowbit uses all 2^e
   binades and reserves one code (E = 0, M = 0) for zero, so it has two more binades below;
2. below its smallest value the reference flushes to zero; lowbit rounds to nearest: from half the smallest
   value up it gives the smallest value;
3. with e = 1 the reference has no binade at all (everything becomes 0); lowbit has two.

The two extra binades are checked against the reference too: called with its bias moved down by one or two
binades (its ``bias`` argument), the reference rounds those binades itself.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tambe_reference import quantize_adaptivfloat, reference_bias

from lowbit.algorithms.adaptivfloat import adaptivfloat_quantize, exponent_bias

SHAPES = [(1000,), (64, 48), (3, 17, 29), (768,)]
SCALES = [1e-4, 0.02, 1.0, 37.0]
DISTRIBUTIONS = {
    "normal": lambda shape, g: torch.randn(shape, generator=g),
    "uniform": lambda shape, g: torch.rand(shape, generator=g) * 2 - 1,
    # log-normal magnitudes spread over many binades: the low binades and the zero rule get values
    "wide": lambda shape, g: torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 2.5),
}
FORMATS = [(n, e) for n in range(4, 9) for e in range(2, n)]
CASES = list(itertools.product(FORMATS, SHAPES, SCALES, DISTRIBUTIONS))


def _tensors():
    """(bits, exp_bits, x) for every case: 20 formats x 4 shapes x 4 scales x 3 distributions = 960 tensors."""
    for i, ((bits, exp_bits), shape, scale, dist) in enumerate(CASES):
        g = torch.Generator().manual_seed(i)
        yield bits, exp_bits, DISTRIBUTIONS[dist](shape, g) * scale


def test_case_count():
    assert len(CASES) == 960


def test_identical_to_the_reference_inside_its_range():
    """Where |x| reaches the reference's smallest value (2^(top - 2^e + 3)), every output is bit-identical."""
    compared = 0
    for bits, exp_bits, x in _tensors():
        ref = quantize_adaptivfloat(x.clone(), bits, exp_bits)
        ours = adaptivfloat_quantize(x, bits, exp_bits)
        top = math.frexp(float(x.abs().max()))[1] - 1
        inside = x.abs() >= math.ldexp(1, top - 2**exp_bits + 3)
        assert torch.equal(ours[inside], ref[inside]), (bits, exp_bits, tuple(x.shape))
        assert (ref[~inside] == 0).all()  # the reference flushes the rest
        compared += int(inside.sum())
    assert compared > 1_000_000


def _reference_extended(x: torch.Tensor, bits: int, exp_bits: int) -> torch.Tensor:
    """The reference's rounding in every binade lowbit has: its own range, and the two binades below it computed
    by the reference with its bias moved down (bias + 1 or + 2) where that window holds |x| unclamped."""
    m = bits - 1 - exp_bits
    top = math.frexp(float(x.abs().max()))[1] - 1
    bias = reference_bias(x, exp_bits)
    out = quantize_adaptivfloat(x.clone(), bits, exp_bits)
    a = x.abs()
    lowest_ref = math.ldexp(1, top - 2**exp_bits + 3)
    for shift in (1, 2):  # later windows overwrite: the lowest window that holds a value decides
        window_top = math.ldexp(2 - 2**-m, top - shift)  # the largest value of the shifted window
        window_low = math.ldexp(1, top - shift - 2**exp_bits + 3)
        use = (a < lowest_ref) & (a >= window_low) & (a <= window_top)
        out = torch.where(use, quantize_adaptivfloat(x.clone(), bits, exp_bits, bias + shift), out)
    return out


def test_extra_binades_round_as_the_reference_does_and_the_zero_rule():
    """Below the reference's range: the reference's own rounding (shifted bias), except lowbit's no-denormal rule
    (deliberate difference 2): [smallest/2, smallest) -> smallest, where the reference gives 0 or 2^b."""
    differ = 0
    for bits, exp_bits, x in _tensors():
        m = bits - 1 - exp_bits
        bias = int(exponent_bias(x.abs().max().reshape(1), exp_bits))
        smallest = math.ldexp(1 + 2**-m, bias)
        expected = _reference_extended(x, bits, exp_bits)
        rule = (x.abs() >= smallest / 2) & (x.abs() < smallest)
        expected = torch.where(rule, torch.sign(x) * smallest, expected)
        ours = adaptivfloat_quantize(x, bits, exp_bits)
        assert torch.equal(ours, expected), (bits, exp_bits, tuple(x.shape))
        differ += int((ours != quantize_adaptivfloat(x.clone(), bits, exp_bits)).sum())
    assert differ > 10_000  # the extra binades are used: the two formats do differ there


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_one_exponent_bit_the_reference_has_no_binade(bits):
    """Deliberate difference 3: with e = 1 the reference's range is empty; lowbit has binades top - 1 and top."""
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(500, generator=g)
    assert (quantize_adaptivfloat(x.clone(), bits, 1) == 0).all()
    q = adaptivfloat_quantize(x, bits, 1)
    top = math.frexp(float(x.abs().max()))[1] - 1
    magnitudes = {math.frexp(v)[1] - 1 for v in q.abs().unique().tolist() if v}
    assert magnitudes == {top - 1, top}
