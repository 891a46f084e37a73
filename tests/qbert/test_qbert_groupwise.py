"""Group-wise quantization: one min/max range per head slice (and row sub-group), along each axis."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.qbert import GroupwiseRecipe
from lowbit.errors import LowbitConfigError
from lowbit.layers import LowbitLinear
from lowbit.quant import Group, quantize_, size_report, uniform_bits
from lowbit.quant.granularity import BlockGroup
from lowbit.roles import Target, find_targets


def reference_minmax(block: torch.Tensor, bits: int) -> torch.Tensor:
    """Q-BERT asymmetric min/max fake-quant of one group, from the definition (grid contains 0)."""
    lo, hi = min(float(block.min()), 0.0), max(float(block.max()), 0.0)
    scale = (hi - lo) / (2**bits - 1)
    zero = round(-lo / scale)
    q = torch.clamp(torch.round(block / scale) + zero, 0, 2**bits - 1)
    return (q - zero) * scale


def quantized(recipe: GroupwiseRecipe, name: str, role: str, weight: torch.Tensor, bits: int) -> torch.Tensor:
    target = Target(name, role, 0, torch.nn.Linear(weight.shape[1], weight.shape[0]))
    quantizer = recipe.weight_quantizer(target, bits)
    quantizer.validate(weight, name)
    return quantizer(weight)


HIDDEN, HEADS = 16, 4  # head dim 4
HEAD_DIM = HIDDEN // HEADS


@pytest.mark.parametrize("groups_per_head", [1, 2, 4])
def test_query_groups_are_head_output_rows_with_row_subgroups(groups_per_head):
    torch.manual_seed(0)
    w = torch.randn(HIDDEN, HIDDEN)
    recipe = GroupwiseRecipe(groups_per_head=groups_per_head, num_attention_heads=HEADS)
    got = quantized(recipe, "bert.encoder.layer.0.attention.self.query", "attention.query", w, 3)
    rows = HEAD_DIM // groups_per_head
    for h in range(HEADS):
        for s in range(groups_per_head):
            r0 = h * HEAD_DIM + s * rows
            torch.testing.assert_close(got[r0:r0 + rows], reference_minmax(w[r0:r0 + rows], 3))


@pytest.mark.parametrize("groups_per_head", [1, 2])
def test_output_projection_groups_are_head_input_columns(groups_per_head):
    torch.manual_seed(1)
    w = torch.randn(HIDDEN, HIDDEN)
    recipe = GroupwiseRecipe(groups_per_head=groups_per_head, num_attention_heads=HEADS)
    got = quantized(recipe, "bert.encoder.layer.0.attention.output.dense", "attention.output", w, 2)
    rows = HIDDEN // groups_per_head
    for h in range(HEADS):
        cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)  # head h's slice of W_o: its input columns
        for s in range(groups_per_head):
            r = slice(s * rows, (s + 1) * rows)
            torch.testing.assert_close(got[r, cols], reference_minmax(w[r, cols], 2))


def test_output_projection_head_ranges_are_independent():
    torch.manual_seed(2)
    w = torch.randn(HIDDEN, HIDDEN)
    recipe = GroupwiseRecipe(groups_per_head=1, num_attention_heads=HEADS)
    before = quantized(recipe, "x.attention.output.dense", "attention.output", w, 2)
    w2 = w.clone()
    w2[3, 0] = 50.0  # head 0's input columns only
    after = quantized(recipe, "x.attention.output.dense", "attention.output", w2, 2)
    changed = (before != after)
    assert changed[:, :HEAD_DIM].any() and not changed[:, HEAD_DIM:].any()


def test_input_axis_groups_consecutive_input_columns():
    torch.manual_seed(3)
    w = torch.randn(8, 24)
    recipe = GroupwiseRecipe(n_groups=3, groups_per_head=None, num_attention_heads=HEADS, axis="input")
    for name, role in (("x.attention.self.key", "attention.key"), ("x.attention.output.dense", "attention.output"),
                       ("x.intermediate.dense", "ffn.intermediate")):
        got = quantized(recipe, name, role, w, 4)
        for g in range(3):
            cols = slice(8 * g, 8 * (g + 1))
            torch.testing.assert_close(got[:, cols], reference_minmax(w[:, cols], 4))


def test_ffn_uses_output_row_groups():
    torch.manual_seed(4)
    w = torch.randn(32, 16)
    recipe = GroupwiseRecipe(n_groups=8, groups_per_head=None, num_attention_heads=HEADS)
    got = quantized(recipe, "x.intermediate.dense", "ffn.intermediate", w, 3)
    for g in range(8):
        torch.testing.assert_close(got[4 * g:4 * (g + 1)], reference_minmax(w[4 * g:4 * (g + 1)], 3))


def test_granularity_per_target():
    recipe = GroupwiseRecipe(groups_per_head=2, num_attention_heads=12)
    mk = lambda name, role: Target(name, role, 0, torch.nn.Linear(2, 2))
    assert recipe.granularity_for(mk("b.encoder.layer.0.attention.self.value", "attention.value")) == Group(24, "output")
    assert recipe.granularity_for(mk("b.encoder.layer.0.attention.output.dense", "attention.output")) == \
        BlockGroup(row_blocks=2, col_blocks=12)
    assert recipe.granularity_for(mk("b.encoder.layer.0.output.dense", "ffn.output")) == Group(24, "output")
    # a count that is not a multiple of the head count cannot be head-aligned on W_o: output rows
    odd = GroupwiseRecipe(n_groups=64, groups_per_head=None, num_attention_heads=12)
    assert odd.granularity_for(mk("b.encoder.layer.0.attention.output.dense", "attention.output")) == Group(64, "output")


def test_block_group_round_trip_and_storage(tiny_model):
    g = BlockGroup(row_blocks=2, col_blocks=4)
    w = torch.randn(6, 8)
    assert torch.equal(g.from_groups(g.to_groups(w), w.shape), w)
    assert g.to_groups(w).shape == (8, 6) and torch.equal(g.to_groups(w)[1], w[:3, 2:4].reshape(-1))
    model = tiny_model()
    quantize_(model, GroupwiseRecipe(groups_per_head=2, num_attention_heads=4), uniform_bits(4))
    wo = model.bert.encoder.layer[0].attention.output.dense
    assert isinstance(wo, LowbitLinear) and wo.quantizer.granularity == BlockGroup(row_blocks=2, col_blocks=4)
    # 32x32 weight at 4 bits + 8 ranges of (fp32 scale + 4-bit zero point)
    assert size_report(model).by_module["bert.encoder.layer.0.attention.output.dense"] == 32 * 32 * 4 + 8 * 36 + 32 * 32


def test_groups_that_do_not_divide_name_the_option(tiny_model):
    model = tiny_model()
    with pytest.raises(LowbitConfigError, match=r"^quantizer\.n_groups"):
        quantize_(model, GroupwiseRecipe(n_groups=5, groups_per_head=None, num_attention_heads=4), uniform_bits(4))
    assert not any(isinstance(m, LowbitLinear) for m in model.modules())  # validated before any change


@pytest.mark.parametrize("kwargs, option", [
    ({"n_groups": 4, "groups_per_head": 2}, "n_groups and groups_per_head"),
    ({"n_groups": None, "groups_per_head": None}, "n_groups and groups_per_head"),
    ({"groups_per_head": 0}, "quantizer.groups_per_head"),
    ({"axis": "rows"}, "quantizer.axis"),
    ({"num_attention_heads": 0}, "quantizer.num_attention_heads"),
])
def test_bad_recipe_values(kwargs, option):
    with pytest.raises(LowbitConfigError, match=option) as e:
        GroupwiseRecipe(**kwargs)
    assert "\n" not in str(e.value)


def test_every_tiny_linear_gets_a_valid_granularity(tiny_model):
    model = tiny_model()
    recipe = GroupwiseRecipe(groups_per_head=2, num_attention_heads=4)
    for t in find_targets(model):
        if t.group in ("attention", "ffn", "pooler"):
            recipe.weight_quantizer(t, 4).validate(t.module.weight, t.name)
