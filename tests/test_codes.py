"""``lowbit.codes``: integer codes recorded beside float activations, and the dyadic rescale consumers use.

The rescale is checked against its definition with exact Python integers (round half to even of
q * m / 2^e, m/2^e the 31-bit dyadic form of S_in / float32(S_out)), not against itself.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from lowbit.codes import attach, lookup, requantized
from lowbit.dyadic import batch_frexp, requantize_symmetric


def _record(shape=(2, 3, 8), scale=None):
    codes = torch.randint(-1000, 1000, shape).double()
    scale = torch.tensor(0.01, dtype=torch.float64) if scale is None else scale
    value = (codes * scale).float()
    return attach(value, codes, scale), codes, scale


def test_records_are_written_and_found_only_without_gradients():
    with torch.no_grad():
        value, codes, _ = _record()
        assert torch.equal(lookup(value).codes, codes)
    assert lookup(value) is None  # gradients on: no consumer reads records
    value2, _, _ = _record()
    with torch.no_grad():
        assert lookup(value2) is None  # written while gradients were on: nothing recorded


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_views_map_onto_the_recorded_codes_and_per_channel_scales(mode):
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        scale = torch.rand(8, dtype=torch.float64) + 0.1  # per channel (last dim)
        value, codes, _ = _record(scale=scale)
        views = {
            "heads": (value.view(2, 3, 2, 4).transpose(1, 2), codes.view(2, 3, 2, 4).transpose(1, 2),
                      scale.view(2, 4).expand(2, 3, 2, 4).transpose(1, 2)),
            "cls": (value[:, 0], codes[:, 0], scale.expand(2, 8)),
            "row": (value[1, 2], codes[1, 2], scale),
        }
        for name, (view, want_codes, want_scale) in views.items():
            found = lookup(view)
            assert found is not None, name
            assert torch.equal(found.codes, want_codes), name
            assert torch.equal(torch.broadcast_to(found.scale, want_codes.shape), want_scale), name


def test_a_non_contiguous_result_keeps_its_layout():
    with torch.no_grad():
        codes = torch.randint(-50, 50, (2, 4, 3)).double()
        value = (codes.transpose(1, 2) * 0.5).float()  # strides of a transpose, a fresh tensor
        assert not value.is_contiguous()
        attach(value, codes.transpose(1, 2), torch.tensor(0.5, dtype=torch.float64))
        assert torch.equal(lookup(value).codes, codes.transpose(1, 2))
        assert torch.equal(lookup(value[:, 1]).codes, codes.transpose(1, 2)[:, 1])


def test_in_place_changes_and_new_results_have_no_record():
    with torch.no_grad():
        value, _, _ = _record()
        view = value[:, 0]
        value.add_(1.0)
        assert lookup(value) is None and lookup(view) is None
        other, _, _ = _record()
        assert lookup(other + 0) is None and lookup(other * 2) is None
        assert lookup(other.to(torch.float64)) is None


def _exact_rescale(q: int, s_in: float, s_out: float) -> int:
    """round_half_even(q * m / 2^e), (m, e) the dyadic form of s_in / float32(s_out), with Python integers."""
    ratio = s_in / float(torch.tensor(s_out, dtype=torch.float32))
    f, k = math.frexp(ratio)
    m = int(Fraction(f) * 2**31 + Fraction(1, 2)) if f > 0 else -int(-Fraction(f) * 2**31 + Fraction(1, 2))
    return round(Fraction(q * m, 2 ** (31 - k)))  # Python's round(Fraction) is half to even


def test_dyadic_rescale_equals_its_definition_in_exact_integers():
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-(2**20), 2**20, (4000,), generator=gen).double()
    s_in = torch.rand(4000, generator=gen, dtype=torch.float64) * 1e-3 + 1e-6
    s_out = torch.tensor(0.0123, dtype=torch.float64)
    got = requantize_symmetric(q, s_in, s_out, bits=32)
    want = [_exact_rescale(int(a), float(b), 0.0123) for a, b in zip(q, s_in)]
    assert got.tolist() == want
    m, e = batch_frexp(torch.tensor([0.75, 3.0]))
    assert m.tolist() == [3 * 2**29, 3 * 2**29] and e.tolist() == [31.0, 29.0]


def test_requantized_clamps_to_the_symmetric_grid_and_sends_minus_inf_to_its_minimum():
    with torch.no_grad():
        codes = torch.tensor([[-1e6, -3.0, 0.0, 5.0, 1e6, float("-inf")]], dtype=torch.float64)
        value = attach(torch.zeros(1, 6), codes, torch.tensor(1.0, dtype=torch.float64))
        out = requantized(value, torch.tensor(1.0), bits=8)
        assert out.tolist() == [[-127.0, -3.0, 0.0, 5.0, 127.0, -127.0]]
