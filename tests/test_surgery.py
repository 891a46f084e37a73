"""Model surgery: exactly the intended modules are replaced; the classifier stays float."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_row_path_equals_full_table
from torch import nn

from lowbit.algorithms.ternarybert import TernaryRecipe, TernaryTWNQuantizer
from lowbit.attention import HOOKS_ATTR
from lowbit.errors import LowbitConfigError
from lowbit.layers import LowbitEmbedding, LowbitLinear
from lowbit.quant import (
    NoQuantization,
    PerModuleBits,
    UniformRecipe,
    UniformWeightQuantizer,
    convert_,
    quantize_,
    uniform_bits,
)
from lowbit.quant.recipes import ActivationSpec


def _names(model, cls):
    return {n for n, m in model.named_modules() if type(m) is cls}


BERT_ENCODER_LINEARS = {f"bert.encoder.layer.{i}.{s}" for i in range(2) for s in (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense")}


def test_ternary_2_2_8_replaces_exactly_intended_modules(tiny_model):
    model = tiny_model("bert")
    report = quantize_(model, TernaryRecipe(), uniform_bits(2, word_embedding_bits=2))
    assert _names(model, LowbitLinear) == BERT_ENCODER_LINEARS | {"bert.pooler.dense"}
    assert _names(model, LowbitEmbedding) == {"bert.embeddings.word_embeddings"}
    assert type(model.classifier) is nn.Linear
    assert type(model.bert.embeddings.position_embeddings) is nn.Embedding
    assert type(model.bert.embeddings.token_type_embeddings) is nn.Embedding
    assert set(report.float_kept) == {"bert.embeddings.position_embeddings",
                                      "bert.embeddings.token_type_embeddings", "classifier"}
    word = model.bert.embeddings.word_embeddings.quantizer
    assert isinstance(word, TernaryTWNQuantizer) and word.row_separable
    layer0 = model.bert.encoder.layer[0]
    assert isinstance(layer0.attention.self.query.quantizer, TernaryTWNQuantizer)
    assert layer0.attention.self.query.input_transforms["quantizer"].bits == 8
    hooks = getattr(layer0.attention.self, HOOKS_ATTR)
    assert hooks.probs["quantizer"].bits == 8 and hooks.query["quantizer"].bits == 8
    assert model.config._attn_implementation == "lowbit"


def test_surgery_shares_parameters_and_keeps_linear_signature(tiny_model):
    model = tiny_model("bert")
    before = model.bert.encoder.layer[0].intermediate.dense
    quantize_(model, UniformRecipe(), uniform_bits(4))
    after = model.bert.encoder.layer[0].intermediate.dense
    assert after.weight is before.weight and after.bias is before.bias
    assert (after.in_features, after.out_features) == (before.in_features, before.out_features)
    assert isinstance(after, nn.Linear)
    fresh = LowbitLinear(3, 5, bias=False)  # same constructor signature as nn.Linear
    assert fresh.weight.shape == (5, 3) and fresh.bias is None


def test_per_module_bits_and_float_roles(tiny_model):
    model = tiny_model("bert")
    bits = PerModuleBits(attention=4, ffn=2, word_embedding=8, position_embedding=None, pooler=None)
    report = quantize_(model, UniformRecipe(), bits)
    layer = model.bert.encoder.layer[1]
    assert layer.attention.self.key.quantizer.bits == 4
    assert layer.attention.output.dense.quantizer.bits == 4
    assert layer.intermediate.dense.quantizer.bits == 2
    assert model.bert.embeddings.word_embeddings.quantizer.bits == 8
    assert type(model.bert.pooler.dense) is nn.Linear
    assert "bert.pooler.dense" in report.float_kept


def test_no_quantization_is_identity(tiny_model, batch):
    model = tiny_model("bert")
    ref = model(**batch).logits
    report = quantize_(model, NoQuantization(), uniform_bits(2))
    assert not report.quantized and not _names(model, LowbitLinear)
    torch.testing.assert_close(model(**batch).logits, ref)


def test_lowbit_attention_without_quantizers_matches_eager(tiny_model, batch):
    model = tiny_model("bert")
    ref = model(**batch).logits
    recipe = UniformRecipe(activation=ActivationSpec(bits=None))
    quantize_(model, recipe, PerModuleBits(attention=None, ffn=None, word_embedding=None, pooler=None,
                                           embedding_projection=None))
    model.set_attn_implementation("lowbit")
    torch.testing.assert_close(model(**batch).logits, ref, atol=1e-5, rtol=1e-5)


# RoBERTa-for-classification has no pooler
@pytest.mark.parametrize("family,n_linear", [("roberta", 12), ("albert", 8)])
def test_other_families_are_supported(tiny_model, batch, family, n_linear):
    model = tiny_model(family)
    quantize_(model, TernaryRecipe(), uniform_bits(2, word_embedding_bits=2))
    assert len(_names(model, LowbitLinear)) == n_linear
    head = model.classifier
    assert all(type(m) is not LowbitLinear for m in head.modules())
    out = model(**batch).logits
    assert out.shape == (3, 2) and torch.isfinite(out).all()


def test_unsupported_model_family_is_a_clear_error():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(LowbitConfigError, match="unknown model family .*'gpt2'"):
        quantize_(model, TernaryRecipe(), uniform_bits(2))


def test_group_count_not_dividing_is_rejected_before_any_change(tiny_model):
    model = tiny_model("bert")
    with pytest.raises(LowbitConfigError, match="n_groups=5 does not divide"):
        quantize_(model, UniformRecipe(granularity="group", n_groups=5), uniform_bits(4))
    assert not _names(model, LowbitLinear)  # validated first, nothing half-replaced


def test_convert_bakes_weight_quantization(tiny_model, batch):
    model = tiny_model("bert")
    recipe = UniformRecipe(activation=None)
    quantize_(model, recipe, uniform_bits(4, word_embedding_bits=4))
    fake = model(**batch).logits
    convert_(model)
    assert not _names(model, LowbitLinear) and not _names(model, LowbitEmbedding)
    torch.testing.assert_close(model(**batch).logits, fake)
    w = model.bert.encoder.layer[0].output.dense.weight
    assert w.unique().numel() <= 16


def test_row_separable_embedding_equals_full_table_quantization(tiny_model):
    model = tiny_model("bert")
    quantize_(model, TernaryRecipe(), uniform_bits(2, word_embedding_bits=2))
    emb = model.bert.embeddings.word_embeddings
    assert_row_path_equals_full_table(emb, torch.tensor([[5, 7, 5, 99]]))


def test_eval_cache_invalidated_when_weights_change(tiny_model):
    layer = LowbitLinear.from_linear(nn.Linear(4, 4))
    layer.add_transform("weight", "quantizer", UniformWeightQuantizer(4, symmetric=True))
    layer.eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        a = layer(x)
        layer.weight.mul_(2)
        b = layer(x)
        expected = x @ layer.quantizer(layer.weight).T + layer.bias
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, expected)


@pytest.mark.parametrize(("groups", "inner", "layers"), [(1, 1, [0]), (2, 1, [0, 1]), (1, 2, [0, 1]), (2, 2, [0, 1, 2, 3])])
def test_albert_layer_index_numbers_the_shared_layers(groups, inner, layers):
    """ALBERT: one shared layer per (group, index in group); depth reuses them. Two groups are two layers, not one
    (so per-layer bits or schedules tell them apart)."""
    from conftest import tiny_config
    from transformers import AlbertForSequenceClassification

    from lowbit.roles import find_targets

    cfg = tiny_config("albert")
    cfg.num_hidden_layers, cfg.num_hidden_groups, cfg.inner_group_num = 4, groups, inner
    model = AlbertForSequenceClassification(cfg)
    queries = find_targets(model, "attention.query")
    assert [t.layer for t in queries] == layers
    names = {t.layer: t.name for t in queries}
    assert all(f"albert_layer_groups.{i // inner}.albert_layers.{i % inner}." in names[i] for i in layers)
