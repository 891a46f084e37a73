"""Hessian-ranked bit assignment: budget respected, more bits to more sensitive layers."""

from __future__ import annotations

import json

import pytest

from lowbit.algorithms.qbert import HessianBits, PerLayerBits, assign_layer_bits
from lowbit.errors import LowbitConfigError
from lowbit.layers import LowbitLinear
from lowbit.quant import UniformRecipe, quantize_
from lowbit.roles import find_targets

SENS = [0.3, 5.0, 1.0, 0.1, 2.0, 0.7]


def test_paper_mixed_settings_on_six_layers():
    bits = assign_layer_bits(SENS, [1] * 6, [2, 3], "average_bits", 2.5)
    assert bits == [2, 3, 3, 2, 3, 2]  # the three most sensitive layers get 3 bits
    bits = assign_layer_bits(SENS, [1] * 6, [2, 4], "average_bits", 3.0)
    assert bits == [2, 4, 4, 2, 4, 2]


@pytest.mark.parametrize("budget", [2.0, 2.2, 2.5, 3.1, 4.0, 8.0])
@pytest.mark.parametrize("choices", [[2, 3], [2, 4, 8], [2, 3, 4, 6, 8]])
def test_budget_respected_and_monotone_in_sensitivity(budget, choices):
    numel = [10, 10, 10, 10, 10, 10]
    bits = assign_layer_bits(SENS, numel, choices, "average_bits", budget)
    assert sum(b * n for b, n in zip(bits, numel)) / sum(numel) <= budget + 1e-9
    assert set(bits) <= set(choices)
    for i in range(6):
        for j in range(6):
            if SENS[i] > SENS[j]:
                assert bits[i] >= bits[j]


def test_size_budget_in_megabytes():
    numel = [2_000_000] * 6  # 2 bits each: 0.5 MB per layer
    bits = assign_layer_bits(SENS, numel, [2, 4], "size_mb", 3.5)  # 3.0 MB at 2 bits, +0.5 MB per upgrade
    assert bits == [2, 4, 2, 2, 2, 2]
    assert sum(b * n for b, n in zip(bits, numel)) / 8 / 1e6 <= 3.5


def test_budget_below_smallest_assignment():
    with pytest.raises(LowbitConfigError, match=r"^bit_assignment\.budget=1\.5 is below"):
        assign_layer_bits(SENS, [1] * 6, [2, 3], "average_bits", 1.5)


def test_unknown_budget_kind_names_the_option():
    with pytest.raises(LowbitConfigError, match=r"^bit_assignment\.budget_kind must be one of") as e:
        HessianBits(sensitivities=SENS, budget_kind="params")
    assert "\n" not in str(e.value)


def test_hessian_bits_from_json_file(tmp_path, tiny_model):
    blocks = {f"layer.{i}": {"kind": "layer", "layer": i, "numel": 100, "sensitivity": s, "mean": s, "summed": s}
              for i, s in enumerate([0.5, 3.0])}
    blocks["layer.0.ffn"] = {"kind": "module", "layer": 0, "numel": 50, "sensitivity": 99.0}
    path = tmp_path / "best.hessian.json"
    path.write_text(json.dumps({"blocks": blocks}))
    assignment = HessianBits(sensitivity_file=str(path), bit_choices=[2, 4], budget=3.0)
    assert assignment.layer_bits == [2, 4]
    model = tiny_model()
    quantize_(model, UniformRecipe(), assignment)
    for t in find_targets(model):
        if t.role in ("attention", "ffn"):
            assert isinstance(t.module, LowbitLinear) and t.module.quantizer.bits == [2, 4][t.layer]
    assert model.bert.embeddings.word_embeddings.quantizer.bits == 8


def test_missing_sensitivity_file_says_how_to_make_it(tmp_path):
    with pytest.raises(LowbitConfigError, match=r"^bit_assignment\.sensitivity_file=.*python -m lowbit.hessian"):
        HessianBits(sensitivity_file=str(tmp_path / "nope.json"))


def test_per_layer_bits_and_size_constraint(tiny_model):
    model = tiny_model()
    quantize_(model, UniformRecipe(), PerLayerBits(layer_bits=[4, 2]))
    assert model.bert.encoder.layer[0].intermediate.dense.quantizer.bits == 4
    assert model.bert.encoder.layer[1].attention.self.query.quantizer.bits == 2
    with pytest.raises(LowbitConfigError, match=r"above bit_assignment\.max_average_bits=3"):
        PerLayerBits(layer_bits=[4, 4], max_average_bits=3)
    with pytest.raises(LowbitConfigError, match=r"^bit_assignment\.layer_bits must be an integer in \[2, 8\]"):
        PerLayerBits(layer_bits=[4, 1])


def test_per_layer_bits_too_short_for_the_model(tiny_model):
    with pytest.raises(LowbitConfigError, match=r"^bit_assignment assigns 1 layer\(s\) but the model has 2 encoder layers"):
        quantize_(tiny_model(), UniformRecipe(), PerLayerBits(layer_bits=[4]))
