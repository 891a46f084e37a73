"""quantizer=adaptivfloat in a model: bit plans, size by hand, packed round trip, deploy refusals, bad inputs."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_RUN, payload_bytes

from lowbit import load_packed
from lowbit.algorithms import METHOD_CARDS
from lowbit.algorithms.adaptivfloat import AdaptivFloatActivationQuantizer, AdaptivFloatRecipe, adaptivfloat_quantize
from lowbit.algorithms.effects import EffectContext
from lowbit.deploy import deploy
from lowbit.errors import LowbitConfigError
from lowbit.export import export_packed
from lowbit.layers import lowbit_layers
from lowbit.quant import PerModuleBits, UniformRecipe, quantize_, size_report, uniform_bits

V, H, F, P, T, LAYERS, LABELS = 120, 32, 64, 64, 2, 2, 2  # the tiny BERT (conftest)
FP = 32
BIAS_BITS = 16  # the exponent bias of a range, stored as int16


def _packed(n: int, bits: int) -> int:
    return math.ceil(n * bits / 8) * 8


@pytest.mark.parametrize("bits,granularity", [(8, "per_tensor"), (5, "per_row")])
def test_size_is_codes_plus_one_exponent_bias_per_range_by_hand(bits, granularity, tiny_model):
    model = tiny_model()
    quantize_(model, AdaptivFloatRecipe(exp_bits=3, granularity=granularity), uniform_bits(bits, word_embedding_bits=bits))
    ranges = (lambda rows: rows) if granularity == "per_row" else (lambda rows: 1)
    word = _packed(V * H, bits) + ranges(V) * BIAS_BITS
    emb_float = (P * H + T * H + 2 * H) * FP
    linear = lambda fan_in, fan_out: _packed(fan_in * fan_out, bits) + ranges(fan_out) * BIAS_BITS + fan_out * FP
    layer = 4 * linear(H, H) + linear(H, F) + linear(F, H) + 2 * 2 * H * FP
    classifier = (H * LABELS + LABELS) * FP
    expected = word + emb_float + LAYERS * layer + linear(H, H) + classifier
    report = size_report(model)
    assert report.total_bits == expected
    assert {s.value_kind for s in report.layers.values()} == {"adaptivfloat"}
    assert report.layers["bert.encoder.layer.0.attention.self.query"].range_bits == ranges(H) * BIAS_BITS


def test_bit_assignment_gives_each_weight_its_bits(tiny_model):
    model = tiny_model()
    quantize_(model, AdaptivFloatRecipe(exp_bits=3), PerModuleBits(attention=4, ffn=6, word_embedding=8, pooler=None))
    for name, layer in lowbit_layers(model):
        expected = 4 if ".attention." in name else 6 if (".intermediate." in name or ".output.dense" in name) else 8
        qp = layer.weight_qparams()
        assert (qp.kind, qp.bits, qp.exp_bits) == ("adaptivfloat", expected, 3), name
        with torch.no_grad():
            assert torch.equal(layer.effective_weight(), adaptivfloat_quantize(layer.weight, expected, 3)), name


def test_the_card_effect_holds_for_adaptivfloat_and_fails_for_a_uniform_grid(tiny_model):
    effect = METHOD_CARDS.get("quantizer/adaptivfloat").effect
    model = tiny_model()
    quantize_(model, AdaptivFloatRecipe(), uniform_bits(8, word_embedding_bits=8))
    assert effect(EffectContext(model, {})) is True
    uniform = tiny_model()
    quantize_(uniform, UniformRecipe(symmetric=True, activation=None), uniform_bits(8))
    with pytest.raises(AssertionError, match="not AdaptivFloat"):
        effect(EffectContext(uniform, {}))
    # a weight moved off the grid after quantization is caught
    layer = model.bert.encoder.layer[0].attention.self.query
    layer.freeze_weight_()
    with torch.no_grad():
        layer.weight[0, 0] += 1e-3
    with pytest.raises(AssertionError, match="off the 8-bit AdaptivFloat grid"):
        effect(EffectContext(model, {}))


ACTIVATIONS = {
    "8_3_float_act": (8, 3, "per_tensor", None),
    "8_3_adaptivfloat_act": (8, 3, "per_tensor", {"format": "adaptivfloat", "bits": 8, "exp_bits": 3}),
    "5_2_per_row_uniform_ema_act": (5, 2, "per_row", {"format": "uniform", "bits": 8, "symmetric": True,
                                                       "mode": "ema", "clip": None}),
    "4_3_log_act": (4, 3, "per_tensor", {"format": "adaptivfloat", "bits": 6, "exp_bits": 3}),  # m = 0: powers of 2
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_packed_round_trip_is_exact_and_the_payload_is_the_size_report(name, tiny_model, batch, tmp_path):
    bits, exp_bits, granularity, activation = ACTIVATIONS[name]
    q_cfg = {"_target_": "lowbit.algorithms.adaptivfloat.AdaptivFloatRecipe", "exp_bits": exp_bits,
             "granularity": granularity, "activation": activation}
    b_cfg = {"_target_": "lowbit.quant.PerModuleBits", "bits": bits, "word_embedding": bits, "position_embedding": 8}
    model = tiny_model()
    quantize_(model, AdaptivFloatRecipe(**{k: v for k, v in q_cfg.items() if k != "_target_"}),
              PerModuleBits(**{k: v for k, v in b_cfg.items() if k != "_target_"}))
    model.train()
    for _ in range(2):  # EMA activation ranges get state
        model(**batch)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        weights = {n: layer.effective_weight().clone() for n, layer in lowbit_layers(model)}
    export_packed(model, tmp_path / "art", {"quantizer": q_cfg, "bit_assignment": b_cfg})
    loaded = load_packed(tmp_path / "art")
    with torch.no_grad():
        for n, w in weights.items():
            assert torch.equal(loaded.get_submodule(n).weight, w), n
        assert torch.equal(loaded(**batch).logits, expected)
    assert size_report(model).total_bits == 8 * payload_bytes(tmp_path / "art" / "model.safetensors")
    assert size_report(loaded).total_bits == size_report(model).total_bits
    if activation and activation["format"] == "adaptivfloat":
        assert any(isinstance(m, AdaptivFloatActivationQuantizer) for m in loaded.modules())


def _adaptivfloat_ibert_model(tiny_model):
    """AdaptivFloat weights with everything else the integer engine asks for (static 8-bit inputs, i-ops)."""
    from lowbit.algorithms.ibert import IntegerApproximation
    from lowbit.builder import prepare_model

    model = tiny_model()
    recipe = AdaptivFloatRecipe(activation={"format": "uniform", "bits": 8, "symmetric": True, "mode": "ema",
                                            "clip": None, "sites": ["linear_input", "query", "key", "value"]})
    methods = {"bit_assignment": uniform_bits(8), "quantizer": recipe, "approximation": IntegerApproximation()}
    for group, method in methods.items():
        method.group, method.option = group, {"quantizer": "adaptivfloat"}.get(group, "x")
    prepare_model(model, methods)
    return model, methods


@pytest.mark.parametrize("backend", ["int8_cpu", "int8_ort"])
def test_integer_backends_refuse_adaptivfloat_in_one_line_before_conversion(backend, tiny_model, monkeypatch):
    model, methods = _adaptivfloat_ibert_model(tiny_model)
    from lowbit.deploy import int8_cpu

    def no_conversion(*args, **kwargs):
        pytest.fail("conversion started")

    monkeypatch.setattr(int8_cpu.IntLinear, "from_layer", no_conversion)
    for given in (methods, {}):  # through the method's convert, and the backend's own check
        with pytest.raises(LowbitConfigError) as err:
            deploy(model, given, backend)
        message = str(err.value)
        assert f"deploy backend {backend} cannot run" in message and "quantizer=adaptivfloat" in message
        assert "\n" not in message
    assert deploy(model, methods, "fake") is model  # the float simulation runs it


# -- bad inputs: one line naming the option, before training --------------------------------------------------------
BAD = [
    (["quantizer.exp_bits=8"], "quantizer.exp_bits must be an integer in [1, 7], got 8"),
    (["quantizer.exp_bits=0"], "quantizer.exp_bits must be an integer in [1, 7], got 0"),
    (["quantizer.exp_bits=three"], "quantizer.exp_bits must be an integer in [1, 7], got 'three'"),
    (["bit_assignment.bits=3"], ("bit_assignment=uniform cannot be combined with quantizer=adaptivfloat: "
                                 "bit_assignment.attention plans 3-bit weights; AdaptivFloat with quantizer.exp_bits=3 "
                                 "takes 4 to 8 bits per weight")),
    (["quantizer.exp_bits=5", "bit_assignment.bits=5"], ("bit_assignment.attention plans 5-bit weights; AdaptivFloat "
                                                         "with quantizer.exp_bits=5 takes 6 to 8 bits per weight")),
    (["bit_assignment=w2e8"], "bit_assignment=w2e8 cannot be combined with quantizer=adaptivfloat"),
    (["bit_assignment.word_embedding=2"], "bit_assignment.word_embedding plans 2-bit weights"),
    (["bit_assignment.pooler=3"], ("quantizer=adaptivfloat: bit_assignment gives bert.pooler.dense 3 bits; AdaptivFloat "
                                   "with quantizer.exp_bits=3 takes 4 to 8 bits per weight")),
    (["bit_assignment=per_layer", "bit_assignment.layer_bits=[8,3]"], "bit_assignment.layer_bits plans 3-bit weights"),
    (["quantizer.granularity=group"], ("quantizer.granularity must be one of ('per_tensor', 'per_row') for "
                                       "AdaptivFloat, got 'group'")),
    (["quantizer.activation={format:posit,bits:8}"], ("quantizer.activation.format must be one of "
                                                      "('adaptivfloat', 'uniform'), got 'posit'")),
    (["quantizer.activation={bits:16}"], ("quantizer.activation.bits must be an integer in [4, 8] for AdaptivFloat, "
                                          "got 16")),
    (["quantizer.activation={bits:4,exp_bits:4}"], ("quantizer.activation.exp_bits must be an integer in [1, 3] at 4 "
                                                    "bits (1 sign bit + exponent bits + mantissa bits), got 4")),
    (["quantizer.activation={bits:8,mode:ema}"], ("quantizer.activation.mode='ema' needs "
                                                  "quantizer.activation.format=uniform")),
    (["quantizer.activation={bits:8,symmetric:false}"], ("quantizer.activation.symmetric=false needs "
                                                         "quantizer.activation.format=uniform")),
]


@pytest.mark.parametrize("overrides,fragment", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_inputs_are_one_line_before_training(overrides, fragment, make_cfg, monkeypatch):
    from lowbit.pipeline import setup

    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("Trainer.fit was called"))
    cfg = make_cfg([*TINY_RUN, "quantizer=adaptivfloat", *overrides])
    with pytest.raises(LowbitConfigError) as err:
        setup(cfg)
    message = str(err.value)
    assert fragment in message and "\n" not in message, message
