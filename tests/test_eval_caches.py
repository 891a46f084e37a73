"""What makes an I-BERT QAT model's evaluation cheaper must not change a single code: the tabulated i-GELU and
i-exp equal the computed ones over their whole domain, the cached weight codes follow every weight change, a
frozen observer ignores the batch. (Speed: ``experiments/ibert/profile_qat_eval.py``.)"""

from __future__ import annotations

import copy

import pytest
import torch
from test_int8_cpu import _trained_ibert

from lowbit.algorithms.ibert import integer as I
from lowbit.algorithms.ibert.approximation import StaticScale
from lowbit.layers import LowbitLinear


@pytest.mark.parametrize(("fn", "lo", "hi"), [(I.int_gelu, -32767, 32767), (I.int_exp, -65534, 0)])
def test_table_equals_the_function_on_every_code_and_follows_the_scale(fn, lo, hi):
    table = I.IntegerTable(fn, lo, hi)
    codes = torch.arange(lo, hi + 1, dtype=torch.float64).reshape(-1, 3) if (hi - lo + 1) % 3 == 0 else \
        torch.arange(lo, hi + 1, dtype=torch.float64)
    for scale in (0.0123, 0.0004567, 0.0123):  # a new scale rebuilds the table; back again, too
        s = torch.tensor(scale, dtype=torch.float64)
        with torch.no_grad():
            got, got_scale = table(codes, s)
        want, want_scale = fn(codes, s)
        assert torch.equal(got, want) and torch.equal(got_scale, want_scale)
        assert got.shape == codes.shape


def test_table_computes_with_gradients_and_refuses_codes_outside_its_domain():
    table = I.IntegerTable(I.int_gelu, -127, 127)
    x = torch.arange(-127.0, 128.0, dtype=torch.float64, requires_grad=True)
    out, _ = table(x, torch.tensor(0.05, dtype=torch.float64))  # QAT: the function itself, straight-through
    out.sum().backward()
    assert x.grad is not None and bool((x.grad != 0).any())
    with torch.no_grad(), pytest.raises((IndexError, RuntimeError)):
        table(torch.tensor([128.0], dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64))
    wide = I.IntegerTable(I.int_gelu, -(2**23 - 1), 2**23 - 1)  # a 24-bit grid: computed, never tabulated
    x, s = torch.tensor([-(2.0**23 - 1), 5.0, 2.0**23 - 1], dtype=torch.float64), torch.tensor(1e-5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(wide(x, s)[0], I.int_gelu(x, s)[0]) and wide._table is None


def test_cached_weight_codes_follow_in_place_weight_updates():
    model = _trained_ibert()
    ids = torch.randint(3, 120, (2, 10))
    with torch.no_grad():
        model(input_ids=ids)  # fills the caches
        before = model(input_ids=ids).logits
        layers = [m for m in model.modules() if isinstance(m, LowbitLinear) and m.accumulate_in_codes]
        for layer in layers[-3:]:  # the last layer's attention output, intermediate and output: in place
            layer.weight.mul_(-1.5)  # (as an optimizer step changes it)
        cached = model(input_ids=ids).logits
        assert not torch.equal(cached, before)
        fresh = copy.deepcopy(model)  # no cache: computes everything from the weights
        for m in fresh.modules():
            if hasattr(m, "_codes_cache"):
                m._codes_cache, m._cache = None, None
        assert torch.equal(cached, fresh(input_ids=ids).logits)


def test_frozen_observer_returns_its_range_whatever_the_batch():
    scale = StaticScale(16)
    scale.train()
    scale(torch.tensor([-2.0, 3.0]))
    stored = scale(torch.tensor([-2.0, 3.0]))
    scale.eval()
    assert torch.equal(scale(torch.tensor([float("nan"), 1e9])), stored)  # the batch is not read
    fresh = StaticScale(16).eval()  # nothing seen yet: the batch's own range, not stored
    assert float(fresh(torch.tensor([-1.0, 4.0]))) == pytest.approx(4.0 / 32767)
    assert not bool(fresh.initialized)
