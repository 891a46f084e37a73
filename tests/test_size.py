"""model_size_bits against a hand count on the tiny BERT (vocab 120, hidden 32, 2 layers, FFN 64)."""

from __future__ import annotations

from lowbit.algorithms.ternarybert import TernaryRecipe
from lowbit.quant import PerModuleBits, UniformRecipe, model_size_bits, quantize_, size_report, uniform_bits

V, H, F, P, T, LAYERS, LABELS = 120, 32, 64, 64, 2, 2, 2
FP = 32


def _fp32_bits():
    emb = (V * H + P * H + T * H + 2 * H) * FP
    layer = (4 * (H * H + H) + (H * F + F) + (F * H + H) + 2 * 2 * H) * FP
    pooler = (H * H + H) * FP
    classifier = (H * LABELS + LABELS) * FP
    return emb + LAYERS * layer + pooler + classifier


def test_fp32_size_is_32_bits_per_parameter(tiny_model):
    model = tiny_model()
    assert model_size_bits(model) == _fp32_bits() == 32 * sum(p.numel() for p in model.parameters())


def test_ternary_2_2_8_hand_count(tiny_model):
    model = tiny_model()
    quantize_(model, TernaryRecipe(), uniform_bits(2, word_embedding_bits=2))
    trits = lambda n: (n + 4) // 5 * 8  # 5 ternary digits per byte
    word = trits(V * H) + V * FP  # packed trits + one alpha per row
    emb_float = (P * H + T * H + 2 * H) * FP
    linear = lambda fan_in, fan_out: trits(fan_in * fan_out) + FP + fan_out * FP  # ternary W + alpha + fp bias
    layer = 4 * linear(H, H) + linear(H, F) + linear(F, H) + 2 * 2 * H * FP
    pooler = linear(H, H)
    classifier = (H * LABELS + LABELS) * FP
    expected = word + emb_float + LAYERS * layer + pooler + classifier
    report = size_report(model)
    assert report.total_bits == expected
    assert report.fp32_bits == _fp32_bits()
    assert report.compression_ratio == _fp32_bits() / expected


def test_asymmetric_group_wise_counts_scale_and_zero_point_per_group(tiny_model):
    model = tiny_model()
    bits = PerModuleBits(attention=4, ffn=None, word_embedding=None, position_embedding=None, pooler=None)
    quantize_(model, UniformRecipe(granularity="group", n_groups=4, activation=None), bits)
    attn = model.bert.encoder.layer[0].attention.self.query
    per_range = FP + 4  # fp32 scale + 4-bit zero point
    assert size_report(model).by_module["bert.encoder.layer.0.attention.self.query"] == (
        H * H * 4 + 4 * per_range + H * FP)
    saved = 4 * LAYERS * (H * H * (FP - 4) - 4 * per_range)
    assert model_size_bits(model) == _fp32_bits() - saved
    assert attn.quantizer.bits == 4
