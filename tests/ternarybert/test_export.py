"""Packed export: bit-exact round trip for every quantizer kind; the payload is what size_report counts."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RUN, payload_bytes

from lowbit import load_packed
from lowbit.algorithms.adaptivfloat import AdaptivFloatRecipe
from lowbit.algorithms.ternarybert import TernaryRecipe
from lowbit.export import export_packed
from lowbit.export.packing import pack_bits, pack_trits, unpack_bits, unpack_trits
from lowbit.layers import lowbit_layers
from lowbit.quant import quantize_, size_report, uniform_bits
from lowbit.quant.recipes import ActivationSpec, UniformRecipe


def test_trit_packing_is_5_per_byte_and_lossless():
    torch.manual_seed(0)
    t = torch.randint(-1, 2, (1003,), dtype=torch.int8)
    packed = pack_trits(t)
    assert packed.dtype == torch.uint8 and packed.numel() == 201  # ceil(1003 / 5)
    assert torch.equal(unpack_trits(packed, t.numel()), t)


@pytest.mark.parametrize("bits", range(2, 9))
def test_bit_packing_lossless_and_tight(bits):
    torch.manual_seed(bits)
    codes = torch.randint(0, 2**bits, (999,))
    packed = pack_bits(codes, bits)
    assert packed.numel() == (999 * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, 999), codes)


RECIPES = {
    "ternary_twn_2_2_8": (lambda: TernaryRecipe(), uniform_bits(2, word_embedding_bits=2)),
    "ternary_lat": (lambda: TernaryRecipe(ternarizer="lat"), uniform_bits(2, word_embedding_bits=2)),
    "ternary_8_8_8": (lambda: TernaryRecipe(), uniform_bits(8, word_embedding_bits=8)),
    "uniform_asym_pertensor_4": (lambda: UniformRecipe(activation=ActivationSpec(bits=8, symmetric=False, mode="ema",
                                                                                 clip=None)),
                                 uniform_bits(4, word_embedding_bits=8, position_embedding_bits=8)),
    "uniform_sym_perrow_3": (lambda: UniformRecipe(symmetric=True, granularity="per_row", activation=None),
                             uniform_bits(3, word_embedding_bits=3)),
    "uniform_group_input_2": (lambda: UniformRecipe(granularity="group", n_groups=4, group_axis="input",
                                                    embedding_granularity="per_row", activation=None),
                              uniform_bits(2, word_embedding_bits=5)),
    "uniform_group_output_8": (lambda: UniformRecipe(symmetric=True, granularity="group", n_groups=8),
                               uniform_bits(8, word_embedding_bits=None)),
    "adaptivfloat_8_3": (lambda: AdaptivFloatRecipe(activation={"bits": 8, "exp_bits": 3}),
                         uniform_bits(8, word_embedding_bits=8)),
}


def _cfgs(name):
    """The same recipe as config dicts (what a run's .hydra/config.yaml holds)."""
    recipe, bits = RECIPES[name][0](), RECIPES[name][1]
    if isinstance(recipe, TernaryRecipe):
        q = {"_target_": "lowbit.algorithms.ternarybert.TernaryRecipe", "ternarizer": recipe.ternarizer}
    elif isinstance(recipe, AdaptivFloatRecipe):
        q = {"_target_": "lowbit.algorithms.adaptivfloat.AdaptivFloatRecipe", "exp_bits": recipe.exp_bits,
             "activation": {"bits": 8, "exp_bits": 3}}
    else:
        q = {"_target_": "lowbit.quant.UniformRecipe", "symmetric": recipe.symmetric, "granularity": recipe.granularity,
             "n_groups": recipe.n_groups, "group_axis": recipe.group_axis,
             "embedding_granularity": recipe.embedding_granularity,
             "activation": None if recipe.activation is None else dict(vars(recipe.activation), sites=list(recipe.activation.sites))}
    b = {"_target_": "lowbit.quant.PerModuleBits", **bits.describe()}
    return recipe, bits, {"quantizer": q, "bit_assignment": b}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_packed_round_trip_is_exact(name, tiny_model, batch, tmp_path):
    model = tiny_model("bert")
    recipe, bits, cfgs = _cfgs(name)
    quantize_(model, recipe, bits)
    model.train()
    torch.manual_seed(0)
    for _ in range(2):  # EMA activation ranges get state; LAT gets a curvature
        model(**batch)
    for _, layer in lowbit_layers(model):
        if hasattr(layer.quantizer, "curvature"):
            layer.quantizer.curvature = torch.rand_like(layer.weight) + 0.5
    model.eval()
    with torch.no_grad():
        expected_logits = model(**batch).logits
        expected_weights = {n: layer.effective_weight().clone() for n, layer in lowbit_layers(model)}
    facts = export_packed(model, tmp_path / "art", cfgs)
    loaded = load_packed(tmp_path / "art")
    with torch.no_grad():
        for n, w in expected_weights.items():
            assert torch.equal(loaded.get_submodule(n).weight, w), n  # bit-exact weights
        assert torch.equal(loaded(**batch).logits, expected_logits)
    assert facts["packed_layers"] == len(expected_weights)
    # the size report counts exactly the bytes the artifact stores, for the original and the reloaded model
    assert size_report(model).total_bits == 8 * payload_bytes(tmp_path / "art" / "model.safetensors")
    assert size_report(loaded).total_bits == size_report(model).total_bits


def test_packed_file_is_smaller_than_fp32(tiny_model, tmp_path):
    model = tiny_model("bert")
    recipe, bits, cfgs = _cfgs("ternary_twn_2_2_8")
    quantize_(model, recipe, bits)
    facts = export_packed(model, tmp_path / "art", cfgs)
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    assert facts["weights_bytes"] < fp32 / 3  # tiny model: classifier/LayerNorm/positions are a big share


def test_export_cli_from_a_training_checkpoint(make_cfg, tmp_path):
    import yaml
    from omegaconf import OmegaConf

    from lowbit.export.__main__ import main as export_main
    from lowbit.pipeline import run

    overrides = [o for o in TINY_RUN if o not in ("callbacks=none", "trainer.fast_dev_run=true")] + [
        "callbacks=default", "~callbacks.progress_bar", "trainer.max_steps=2", "+trainer.limit_val_batches=1",
        "quantizer=ternary_twn", "bit_assignment=w2e2"]
    cfg = make_cfg(overrides)
    run(cfg)
    run_dir = tmp_path / "out"
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    facts = export_main([str(run_dir / "checkpoints" / "last.ckpt"), str(tmp_path / "packed")])
    assert facts["ratio"] > 3 and facts["packed_layers"] == 14 and facts["reload_max_abs_logit_diff"] == 0.0
    assert (tmp_path / "packed" / "tokenizer").is_dir()


def test_qbert_groupwise_model_exports_exactly(tiny_model, batch, tmp_path):
    """Head-aligned group ranges (Q-BERT) round-trip through the same uniform packer."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lowbit.compose import conf_dir

    q_cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "quantizer" / "groupwise.yaml"), resolve=True)
    q_cfg.update(activation=None, num_attention_heads=4)  # the tiny model has 4 heads
    b_cfg = {"_target_": "lowbit.quant.uniform_bits", "bits": 3, "word_embedding_bits": 8}
    model = tiny_model("bert")
    quantize_(model, instantiate(q_cfg), instantiate(b_cfg))
    with torch.no_grad():
        expected = model(**batch).logits
    b_cfg = {"_target_": "lowbit.quant.PerModuleBits", "bits": 3, "word_embedding": 8}
    export_packed(model, tmp_path / "art", {"quantizer": q_cfg, "bit_assignment": b_cfg})
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "art")(**batch).logits, expected)
