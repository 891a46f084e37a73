"""Quantizer numerics against their definitions and against transformers' I-BERT reference."""

from __future__ import annotations

import pytest
import torch
from transformers.models.ibert.quant_modules import symmetric_linear_quantization_params

from lowbit.algorithms.ternarybert import TernaryTWNQuantizer
from lowbit.errors import LowbitConfigError
from lowbit.quant import ActivationQuantizer, Group, PerRow, PerTensor, UniformWeightQuantizer
from lowbit.quant.functional import round_ste


def test_twn_per_tensor_matches_definition():
    torch.manual_seed(0)
    w = torch.randn(16, 24)
    q = TernaryTWNQuantizer(PerTensor(), clip=None)(w)
    delta = 0.7 * w.abs().mean()
    kept = w.abs() > delta
    alpha = w.abs()[kept].mean()
    expected = torch.where(kept, alpha * w.sign(), torch.zeros_like(w))
    torch.testing.assert_close(q, expected)
    values = q.unique()
    assert values.numel() == 3
    torch.testing.assert_close(values, torch.stack([-alpha, torch.tensor(0.0), alpha]))


def test_twn_per_row_has_one_alpha_per_row():
    torch.manual_seed(0)
    w = torch.randn(5, 40) * torch.arange(1, 6).unsqueeze(1)  # rows on very different scales
    q = TernaryTWNQuantizer(PerRow(), clip=None)(w)
    for row_w, row_q in zip(w, q):
        delta = 0.7 * row_w.abs().mean()
        alpha = row_w.abs()[row_w.abs() > delta].mean()
        mags = row_q.abs().unique()
        assert mags.numel() == 2 and mags[0] == 0 and mags[1].item() == pytest.approx(alpha.item())
        assert torch.equal(row_q != 0, row_w.abs() > delta)


def test_twn_clips_at_2_5_and_ste_zero_outside_clip():
    w = torch.tensor([[-4.0, -1.0, 0.05, 0.5, 2.0, 3.0]], requires_grad=True)
    q = TernaryTWNQuantizer(PerTensor(), clip=2.5)(w)
    clipped = w.detach().clamp(-2.5, 2.5)
    delta = 0.7 * clipped.abs().mean()
    alpha = clipped.abs()[clipped.abs() > delta].mean()
    torch.testing.assert_close(q.detach(), alpha * clipped.sign() * (clipped.abs() > delta))
    q.sum().backward()
    assert w.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_uniform_levels_and_error_bound(bits, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(32, 64)
    quant = UniformWeightQuantizer(bits, symmetric=symmetric)
    q = quant(w)
    levels = q.unique().numel()
    assert levels <= 2**bits - (1 if symmetric else 0)
    assert levels >= 2 ** (bits - 1)  # the grid is actually used
    if symmetric:
        scale = w.abs().max() / (2 ** (bits - 1) - 1)
    else:
        scale = (w.max() - w.min()) / (2**bits - 1)
    assert (q - w).abs().max() <= scale / 2 + 1e-6
    # every value is on the grid: an integer multiple of the scale from the zero point
    zp = 0.0 if symmetric else torch.round(-w.min() / scale)
    ints = q / scale + zp
    torch.testing.assert_close(ints, ints.round(), atol=1e-4, rtol=0)


def test_symmetric_per_row_matches_ibert_reference():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    q = UniformWeightQuantizer(8, symmetric=True, granularity=PerRow())(w)
    scale = symmetric_linear_quantization_params(8, w.min(dim=1).values, w.max(dim=1).values, per_channel=True)
    expected = torch.clamp(torch.round(w / scale.view(-1, 1)), -128, 127) * scale.view(-1, 1)
    torch.testing.assert_close(q, expected)


@pytest.mark.parametrize("axis", ["output", "input"])
def test_group_wise_one_range_per_group_along_axis(axis):
    torch.manual_seed(0)
    n_groups, out_f, in_f = 4, 8, 12
    w = torch.randn(out_f, in_f)
    factors = torch.tensor([1.0, 10.0, 100.0, 1000.0])
    if axis == "output":
        w = w * factors.repeat_interleave(out_f // n_groups).unsqueeze(1)
        blocks = w.split(out_f // n_groups, dim=0)
    else:
        w = w * factors.repeat_interleave(in_f // n_groups).unsqueeze(0)
        blocks = w.split(in_f // n_groups, dim=1)
    q = UniformWeightQuantizer(4, symmetric=True, granularity=Group(n_groups, axis))(w)
    q_blocks = q.split(out_f // n_groups, dim=0) if axis == "output" else q.split(in_f // n_groups, dim=1)
    for block, q_block in zip(blocks, q_blocks):
        scale = block.abs().max() / 7
        torch.testing.assert_close(q_block, torch.round(block / scale).clamp(-7, 7) * scale)
    # the other axis would give different ranges: the axis really matters
    other = "input" if axis == "output" else "output"
    q_other = UniformWeightQuantizer(4, symmetric=True, granularity=Group(n_groups, other))(w)
    assert not torch.allclose(q, q_other)


def test_group_count_must_divide_axis():
    with pytest.raises(LowbitConfigError, match="n_groups=5 does not divide the output axis"):
        Group(5, "output").validate(torch.Size([8, 12]), "layer.weight")


def test_bits_out_of_range_rejected():
    with pytest.raises(LowbitConfigError, match="weight bits must be an integer in \\[2, 8\\]"):
        UniformWeightQuantizer(1)
    with pytest.raises(LowbitConfigError, match="weight bits"):
        UniformWeightQuantizer(9)


def test_round_ste_passes_gradient():
    x = torch.linspace(-3, 3, 13, requires_grad=True)
    round_ste(x * 1.7).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1.7))


def test_activation_dynamic_symmetric_definition_and_ste():
    x = torch.tensor([-3.0, -1.0, -0.01, 0.3, 1.2, 2.4, 5.0], requires_grad=True)
    q = ActivationQuantizer(bits=8, mode="dynamic", clip=2.5)(x)
    c = x.detach().clamp(-2.5, 2.5)
    s = 127 / c.abs().max()
    torch.testing.assert_close(q.detach(), torch.round(c * s) / s)
    q.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_activation_ema_tracks_range_and_freezes_in_eval():
    quant = ActivationQuantizer(bits=8, symmetric=False, mode="ema", clip=None, momentum=0.9)
    quant.train()
    quant(torch.tensor([-1.0, 2.0]))
    assert quant.running_min.item() == -1.0 and quant.running_max.item() == 2.0
    quant(torch.tensor([-3.0, 4.0]))
    assert quant.running_min.item() == pytest.approx(0.9 * -1 + 0.1 * -3)
    assert quant.running_max.item() == pytest.approx(0.9 * 2 + 0.1 * 4)
    quant.eval()
    before = (quant.running_min.item(), quant.running_max.item())
    out = quant(torch.tensor([-100.0, 0.5, 100.0]))
    assert (quant.running_min.item(), quant.running_max.item()) == before
    assert out.min().item() >= before[0] - 1e-5 and out.max().item() <= before[1] + 1e-5  # saturates
    assert out.unique().numel() <= 256


def test_activation_bad_mode_names_option():
    with pytest.raises(LowbitConfigError, match="quantizer.activation.mode"):
        ActivationQuantizer(mode="minmax")
