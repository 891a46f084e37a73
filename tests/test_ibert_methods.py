"""approximation=ibert|hgelu|sigmoid_gelu and quantizer=ibert as methods: surgery, numerics in the model, training.

The kernels themselves are tested against transformers' I-BERT reference in ``test_ibert_numerics.py``;
here: the modules that carry them in a model compute exactly the kernel on their static input grid,
replace the right roles on BERT / RoBERTa / ALBERT, refuse a non-GELU activation in one line, give
gradients, and quantizer=ibert puts weights, biases and softmax outputs on I-BERT's grids.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification

from lowbit.algorithms.ibert import integer as I
from lowbit.algorithms.ibert.approximation import (
    FloatGELUApproximation,
    IntegerApproximation,
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    StaticScale,
)
from lowbit.algorithms.ibert.recipe import FixedScaleQuantizer, IBertRecipe, IntBias
from lowbit.builder import prepare_model
from lowbit.errors import LowbitConfigError
from lowbit.quant import PerModuleBits


def _model(model_type="bert", **overrides):
    torch.manual_seed(0)
    cfg = tiny_config(model_type)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return AutoModelForSequenceClassification.from_config(cfg)


def _prepare(model, approximation=None, quantizer=None):
    methods = {"bit_assignment": PerModuleBits(bits=8, word_embedding=8, position_embedding=8, token_type_embedding=8)}
    if quantizer is not None:
        methods["quantizer"] = quantizer
    if approximation is not None:
        methods["approximation"] = approximation
    for group, m in methods.items():
        m.group, m.option = group, type(m).__name__
    prepare_model(model, methods)
    return methods


def _train_steps(model, batch, steps=3):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.tensor([0, 1, 1])
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
    return loss


def test_int_gelu_module_is_the_kernel_on_its_static_grid():
    torch.manual_seed(0)
    gelu = IntGELU(input_bits=16).train()
    x = torch.randn(4, 64) * 3
    gelu(x)  # the first training batch sets the range
    gelu.eval()
    scale = I.symmetric_scale(torch.maximum(gelu.input_scale.running_min.abs(), gelu.input_scale.running_max.abs()), 16)
    expected_codes, out_scale = I.int_gelu(torch.round(x.double() / scale).clamp(-(2**15 - 1), 2**15 - 1), scale)
    assert torch.equal(gelu(x), (expected_codes * out_scale).float())
    assert (gelu(x) - torch.nn.functional.gelu(x)).abs().max() < 0.03


def test_static_scale_is_ema_095_and_frozen_in_eval():
    obs = StaticScale(8, momentum=0.95).train()
    obs(torch.tensor([-1.0, 2.0]))
    obs(torch.tensor([-3.0, 4.0]))
    assert obs.running_max.item() == pytest.approx(0.95 * 2 + 0.05 * 4)
    assert obs.running_min.item() == pytest.approx(0.95 * -1 + 0.05 * -3)
    obs.eval()
    before = obs.running_max.clone()
    s = obs(torch.tensor([100.0]))
    assert torch.equal(obs.running_max, before) and s.item() == pytest.approx(before.item() / 127)


def test_int_softmax_ignores_masked_keys_and_outputs_uint8_codes():
    sm = IntSoftmax().train()
    scores = torch.randn(2, 3, 4, 6) * 2
    scores[..., -2:] = torch.finfo(torch.float32).min  # masked keys
    p = sm(scores)
    assert sm.input_scale.running_min.item() > -100  # the mask's finfo.min did not set the range
    codes = p.double() * 256
    assert torch.equal(codes, codes.round()) and codes.max() <= 255 and codes.min() >= 0
    assert (p[..., -2:] == 0).all()
    assert torch.allclose(p.sum(-1), torch.ones(()), atol=6 / 256)
    assert (p - torch.softmax(scores, -1)).abs().max() < 6 / 256


def test_int_layernorm_shares_parameters_and_is_close():
    ln = torch.nn.LayerNorm(32)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5), ln.bias.uniform_(-0.2, 0.2)
    ilm = IntLayerNorm(ln).train()
    assert ilm.weight is ln.weight and ilm.bias is ln.bias
    x = torch.randn(5, 32) * 4 + 1
    out = ilm(x)
    assert (out - ln(x)).abs().max() < 0.02
    assert int(ilm.shift) >= 0


@pytest.mark.parametrize("model_type", ["bert", "roberta", "albert"])
def test_approximation_replaces_every_op_and_trains(model_type, batch):
    extra = {"hidden_act": "gelu"} if model_type == "albert" else {}
    model = _model(model_type, **extra)
    approx = IntegerApproximation()
    _prepare(model, approximation=approx)
    layers = 1 if model_type == "albert" else 2  # ALBERT shares one layer
    assert sum(isinstance(m, IntGELU) for m in model.modules()) == layers
    assert sum(isinstance(m, IntSoftmax) for m in model.modules()) == layers
    assert sum(isinstance(m, IntLayerNorm) for m in model.modules()) == 2 * layers + 1
    assert approx.summary()["replaced_layernorm"] == 2 * layers + 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = _train_steps(model, batch)
    assert torch.isfinite(loss)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any("LayerNorm" in n or "layer_norm" in n.lower() for n in moved), "no gradient reached LayerNorm weights"
    assert any("query" in n for n in moved), "no gradient through i-softmax into the query weights"


def test_non_gelu_activation_is_one_line_naming_the_option():
    model = _model("bert", hidden_act="relu")
    with pytest.raises(LowbitConfigError, match=r"approximation.gelu=ibert .*'relu'; set approximation.gelu=exact"):
        _prepare(model, approximation=IntegerApproximation())
    # the other ops alone still work on that model
    _prepare(_model("bert", hidden_act="relu"), approximation=IntegerApproximation(gelu="exact"))


def test_albert_tanh_gelu_is_refused():
    with pytest.raises(LowbitConfigError, match="gelu_new"):
        _prepare(_model("albert"), approximation=IntegerApproximation())


@pytest.mark.parametrize("gelu,cls", [("hgelu", FloatGELUApproximation), ("sigmoid", FloatGELUApproximation),
                                      ("ibert", IntGELU)])
def test_per_op_switch_replaces_one_op_alone(gelu, cls):
    model = _model()
    _prepare(model, approximation=IntegerApproximation(gelu=gelu, softmax="exact", layernorm="exact"))
    assert sum(isinstance(m, cls) for m in model.modules()) == 2
    assert not any(isinstance(m, (IntSoftmax, IntLayerNorm)) for m in model.modules())


def test_bad_switch_is_one_line():
    with pytest.raises(LowbitConfigError, match=r"approximation.softmax must be one of"):
        IntegerApproximation(softmax="fast")


def test_ibert_quantizer_grids(batch):
    model = _model()
    _prepare(model, quantizer=IBertRecipe(), approximation=IntegerApproximation())
    _train_steps(model, batch, steps=2)
    model.eval()
    from lowbit.layers import lowbit_layers

    checked = 0
    for name, layer in lowbit_layers(model):
        qp = layer.weight_qparams()
        if isinstance(layer, torch.nn.Linear) and qp is not None:
            assert qp.symmetric and qp.bits == 8 and qp.n_ranges == layer.out_features, name
            codes = qp.codes(layer.effective_weight())
            assert codes.abs().max() <= 127
            assert any(isinstance(t, IntBias) for t in layer.bias_transforms.values()), name
            s_x = IntBias.input_scale(layer)
            grid = qp.scale.double() * s_x.double()
            with torch.no_grad():
                bias_codes = layer._bias().double() / grid
            assert torch.allclose(bias_codes, bias_codes.round(), atol=1e-3), name
            checked += 1
        elif qp is not None:  # embeddings: per tensor
            assert qp.symmetric and qp.n_ranges == 1, name
    assert checked >= 6
    assert sum(isinstance(m, FixedScaleQuantizer) for m in model.modules()) == 2


def test_ibert_experiment_composes_with_ternary_weights(make_cfg):
    from lowbit.builder import build_model

    cfg = make_cfg(["+experiment=ternarybert_sst2", "model=tiny", "approximation=ibert", "distillation=none",
                    "finetune.epochs=0"])
    built = build_model(cfg)
    assert any(isinstance(m, IntSoftmax) for m in built.model.modules())
    assert OmegaConf.select(cfg, "approximation.gelu") == "ibert"


def test_table1_is_one_command_and_matches_the_paper(tmp_path):
    """``python -m lowbit.tables ibert_table1``: a computed table; ours equal the paper to two significant digits."""
    from lowbit.tables import TableSpec, run_table

    spec = TableSpec.load("ibert_table1")
    rows = run_table(spec, [], tmp_path, wandb_mode="disabled")
    assert (tmp_path / "ibert_table1.csv").exists() and (tmp_path / "ibert_table1.md").exists()
    two = lambda v: float(f"{v:.2g}")
    for row in rows:
        for metric in ("L2", "Linf"):
            paper = row.get(f"paper {metric}")
            if paper is not None:
                assert two(row[f"ours {metric}"]) == paper, (row["row"], metric, row[f"ours {metric}"], paper)
    with pytest.raises(LowbitConfigError, match="computed, not trained"):
        run_table(spec, ["data=mrpc"], tmp_path, wandb_mode="disabled")
