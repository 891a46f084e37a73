"""Core v2: roles, the layer transform chain, the surgery API and every hook of the method contract.

The contract hooks are exercised by ``ProbeMethod`` below, run through the real pipeline as the
``early_exit`` group's ``_target_`` (any group would do: none is special).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_RUN, assert_row_path_equals_full_table
from torch import nn

from lowbit.attention import HOOKS_ATTR
from lowbit.builder import build_methods
from lowbit.edit import ModelEditor
from lowbit.errors import LowbitConfigError
from lowbit.layers import LowbitEmbedding, LowbitLinear, WeightTransform, lowbit_layers, wrap
from lowbit.methods import Method, ParamGroup, Stage
from lowbit.pipeline import train
from lowbit.quant import ActivationSpec, UniformRecipe, UniformWeightQuantizer, quantize_, uniform_bits
from lowbit.roles import find_targets

# ---- roles -----------------------------------------------------------------------------------------------------------
EXPECTED_ROLES = {  # role -> count on the tiny models (2 layers; ALBERT shares one layer)
    "bert": {"word_embedding": 1, "position_embedding": 1, "token_type_embedding": 1, "attention.query": 2,
             "attention.key": 2, "attention.value": 2, "attention.output": 2, "ffn.intermediate": 2, "ffn.output": 2,
             "act_fn": 2, "layer_norm.embedding": 1, "layer_norm.attention": 2, "layer_norm.ffn": 2,
             "self_attention": 2, "pooler": 1, "classifier": 1},
    "roberta": {"attention.query": 2, "act_fn": 2, "layer_norm.ffn": 2, "self_attention": 2, "pooler": 0,
                "classifier": 2},
    "albert": {"embedding_projection": 1, "attention.query": 1, "attention.output": 1, "ffn.intermediate": 1,
               "ffn.output": 1, "act_fn": 1, "layer_norm.embedding": 1, "layer_norm.attention": 1, "layer_norm.ffn": 1,
               "self_attention": 1, "pooler": 1, "classifier": 1},
}


@pytest.mark.parametrize("family", sorted(EXPECTED_ROLES))
def test_roles_are_found_per_family(tiny_model, family):
    model = tiny_model(family)
    for role, count in EXPECTED_ROLES[family].items():
        assert len(find_targets(model, role)) == count, role
    # a prefix asks for every role under it
    assert len(find_targets(model, "attention")) == sum(
        len(find_targets(model, f"attention.{p}")) for p in ("query", "key", "value", "output"))
    act = find_targets(model, "act_fn")[0]
    assert not isinstance(act.module, (nn.Linear, nn.Embedding)) and act.layer == 0


# ---- the layer wrapper -----------------------------------------------------------------------------------------------
class Scale(WeightTransform):
    """A test transform: multiplies the weight by a learnable factor."""

    chain_order = 30

    def __init__(self, factor: float = 2.0):
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))

    def forward(self, weight, mask=None):
        return weight * self.factor


class KeepMask(WeightTransform):
    kind, chain_order, packed_buffers = "mask", 10, ("mask",)

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.clone())

    @property
    def row_separable(self) -> bool:
        return True

    def forward(self, weight, mask=None):
        return weight * self.mask

    def forward_rows(self, rows, row_ids, mask=None):
        return rows * self.mask[row_ids]

    def cache_key(self):
        return (self.mask._version, self.mask.data_ptr())


def test_from_linear_shares_parameters_and_keeps_everything_else():
    linear = nn.Linear(4, 3)
    linear.register_buffer("extra", torch.ones(2))
    linear.note = "kept"
    calls = []
    linear.register_forward_hook(lambda m, i, o: calls.append(1))
    wrapped = LowbitLinear.from_linear(linear)
    assert wrapped.weight is linear.weight and wrapped.bias is linear.bias
    assert torch.equal(wrapped.extra, linear.extra) and wrapped.note == "kept"
    wrapped(torch.randn(2, 4))
    assert calls == [1]  # the hook came along
    assert wrap(wrapped) is wrapped and LowbitLinear.from_linear(wrapped) is wrapped  # idempotent
    assert "weight_transforms" not in linear._modules  # the original module was not mutated
    fresh = LowbitLinear(3, 5, bias=False)  # nn.Linear's constructor signature
    assert fresh.weight.shape == (5, 3) and fresh.bias is None


def test_chain_runs_mask_before_quantizer_whatever_the_insertion_order():
    torch.manual_seed(0)
    layer = LowbitLinear.from_linear(nn.Linear(8, 6))
    mask = torch.rand(6, 8) > 0.5
    layer.add_transform("weight", "quantizer", UniformWeightQuantizer(3, symmetric=True))
    layer.add_transform("weight", "pruning", KeepMask(mask))
    assert list(layer.weight_transforms) == ["pruning", "quantizer"]
    expected = UniformWeightQuantizer(3, symmetric=True)(layer.weight * mask)
    torch.testing.assert_close(layer.effective_weight(), expected)
    assert (layer.effective_weight()[~mask] == 0).all()  # pruned stays zero after quantization
    with pytest.raises(LowbitConfigError, match="already has a transform named 'pruning'"):
        layer.add_transform("weight", "pruning", KeepMask(mask))


def test_eval_cache_follows_the_mask_and_the_weight():
    layer = LowbitLinear.from_linear(nn.Linear(4, 4))
    keep = KeepMask(torch.ones(4, 4, dtype=torch.bool))
    layer.add_transform("weight", "pruning", keep)
    layer.eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        a = layer(x)
        keep.mask[0].fill_(False)  # in place: the cache key sees the new mask version
        b = layer(x)
    assert not torch.equal(a, b) and torch.equal(b[:, 0], layer.bias[0].expand(2))


def test_embedding_row_path_equals_full_table_through_a_chain():
    torch.manual_seed(0)
    emb = LowbitEmbedding.from_embedding(nn.Embedding(20, 6))
    emb.add_transform("weight", "pruning", KeepMask(torch.rand(20, 6) > 0.3))
    from lowbit.quant import PerRow

    emb.add_transform("weight", "quantizer", UniformWeightQuantizer(4, symmetric=True, granularity=PerRow()))
    assert_row_path_equals_full_table(emb, torch.tensor([[3, 7, 3, 19]]))


def test_attention_slots_are_registered_modules(tiny_model, batch):
    model = tiny_model("bert")
    ref = model(**batch).logits
    edit = ModelEditor(model)
    edit.group = "probe"

    class ScaleProbs(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.tensor(0.5))

        def forward(self, probs):
            return probs * self.gain

    for target, _ in edit.self_attention():
        edit.add_attention_transform(target, "probs", ScaleProbs())
    names = [n for n, _ in model.named_parameters() if n.endswith(f"{HOOKS_ATTR}.probs.probe.gain")]
    assert len(names) == 2 and all(n in model.state_dict() for n in names)
    assert not torch.allclose(model(**batch).logits, ref)  # the slot runs
    assert next(model.get_submodule(names[0].rsplit(".", 1)[0]).parameters()).dtype == torch.float32
    model.double()  # moved with the model
    assert model.get_submodule(names[0].rsplit(".", 1)[0]).gain.dtype == torch.float64


def test_replace_a_role_module_and_clashes_name_both_groups(tiny_model, batch):
    model = tiny_model("bert")
    ref = model(**batch).logits
    edit = ModelEditor(model)
    edit.group = "approximation"
    for target in edit.targets("act_fn"):
        edit.replace(target, nn.ReLU())
    assert isinstance(model.bert.encoder.layer[0].intermediate.intermediate_act_fn, nn.ReLU)
    assert not torch.allclose(model(**batch).logits, ref)
    edit.group = "other"
    with pytest.raises(LowbitConfigError, match="already replaced by 'approximation'"):
        edit.replace(edit.targets("act_fn")[0], nn.Tanh())


def test_added_modules_get_a_role_and_are_trained_and_saved(tiny_model):
    model = tiny_model("bert")
    edit = ModelEditor(model)
    edit.group = "early_exit"
    for i in range(2):
        edit.add_module(f"exit_{i}", nn.Linear(32, 2), role=f"exit.{i}")
    found = find_targets(model, "exit")
    assert [t.role for t in found] == ["exit.0", "exit.1"] and found[1].layer == 1
    assert "lowbit_modules.exit_1.weight" in model.state_dict()
    with pytest.raises(LowbitConfigError, match="already taken"):
        edit.add_module("exit_0", nn.Linear(32, 2), role="exit.0")


def test_a_second_method_adds_to_the_first_ones_wrapper(tiny_model):
    model = tiny_model("bert")
    edit = ModelEditor(model)
    edit.group = "pruning"
    query = edit.targets("attention.query")[0]
    edit.add_weight_transform(query, KeepMask(torch.ones_like(query.module.weight, dtype=torch.bool)))
    wrapper = model.get_submodule(query.name)
    quantize_(model, UniformRecipe(activation=None), uniform_bits(4))
    assert model.get_submodule(query.name) is wrapper  # not wrapped twice
    assert list(wrapper.weight_transforms) == ["pruning", "quantizer"]


def test_activation_on_float_linears_is_explicit(tiny_model):
    from lowbit.quant import PerModuleBits

    bits = PerModuleBits(bits=4, pooler=None)
    model = tiny_model("bert")
    report = quantize_(model, UniformRecipe(activation=ActivationSpec(bits=8)), bits)
    assert report.activation_skipped_float == ["bert.pooler.dense"]
    assert type(model.bert.pooler.dense) is nn.Linear
    model = tiny_model("bert")
    report = quantize_(model, UniformRecipe(activation=ActivationSpec(bits=8, float_layers="quantize")), bits)
    assert not report.activation_skipped_float and "bert.pooler.dense" in report.activation_inputs
    pooler = model.bert.pooler.dense
    assert pooler.quantizer is None and "quantizer" in pooler.input_transforms  # float weight, 8-bit input
    with pytest.raises(LowbitConfigError, match="quantizer.activation.float_layers"):
        ActivationSpec(float_layers="sometimes")


# ---- the method contract, end to end -----------------------------------------------------------------------------------
PROBE_LR = 0.05


class ProbeMethod(Method):
    """Uses every hook; records what the pipeline did with it."""

    def __init__(self, stage_epochs: int = 1):
        self.stage_epochs = stage_epochs
        self.steps: list[int] = []
        self.modes: dict[str, dict] = {}
        self.callback_saw_head = False

    def prepare(self, model, edit):
        self.head = edit.add_module("probe_head", nn.Linear(model.config.hidden_size, 1), role="exit.probe").module

    def param_groups(self, model):
        return [ParamGroup(list(self.head.parameters()), "probe_head", lr=PROBE_LR, weight_decay=0.0)]

    def callbacks(self):
        probe = self

        class SeesPrepare(pl.Callback):
            def on_train_start(self, trainer, pl_module):
                probe.callback_saw_head = any(p is probe.head.weight for p in pl_module.parameters())

        return [SeesPrepare()]

    def forward_kwargs(self, mode):
        return {"output_hidden_states": True} if mode == "eval" else {}

    def loss_terms(self):
        def probe_loss(outputs, batch, step):
            self.steps.append(step)
            hidden = outputs.hidden_states if outputs.hidden_states is not None else None
            assert hidden is None  # train forwards carry no hidden states for this method
            return {"probe": 1e-3 * self.head.weight.pow(2).sum()}

        return [probe_loss]

    def eval_outputs(self, outputs, batch):
        assert outputs.hidden_states is not None  # eval forwards asked for them
        probs = outputs.logits.softmax(-1)
        return {"entropy": -(probs * probs.clamp_min(1e-12).log()).sum(-1)}

    def eval_metrics(self, collected, labels, task):
        assert collected["entropy"].shape == labels.shape  # the whole eval set, one pass
        return {"probe_mean_entropy": float(collected["entropy"].mean())}

    def stages(self):
        return [Stage("probe_stage", self.stage_epochs, position="after", lr=1e-2,
                      trainable=lambda model: model.classifier.parameters(), losses=("task",),
                      freeze_observers=True)]

    def summary(self):
        return {"steps_seen": len(self.steps), "callback_saw_head": self.callback_saw_head}


def test_every_contract_hook_runs_through_the_pipeline(make_cfg, monkeypatch):
    cfg = make_cfg([o for o in TINY_RUN if o != "trainer.fast_dev_run=true"] + [
        "early_exit._target_=test_core_contract.ProbeMethod", "quantizer=uniform", "bit_assignment.bits=4",
        "trainer.max_steps=3", "+trainer.limit_val_batches=2", "data.max_train_samples=24"])
    from lowbit.pipeline import run_stage

    seen = {}

    def spy(stage, model, methods, datamodule, cfg_, optim):
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["buffers"] = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
        out = run_stage(stage, model, methods, datamodule, cfg_, optim)
        seen["after"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["buffers_after"] = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
        return out

    monkeypatch.setattr("lowbit.pipeline.run_stage", spy)
    result = train(cfg)
    probe: ProbeMethod = result.job.methods["early_exit"]
    m = result.metrics
    assert probe.steps == [0, 1, 2]  # loss terms see the global step
    assert m["train/loss_probe"] > 0 and m["early_exit/callback_saw_head"] is True
    assert "val/probe_mean_entropy" in m  # eval hooks -> a metric from the same eval pass
    assert "probe_stage/val/acc" in m  # the after stage ran, resumable from its dir
    assert Path(cfg.paths.output_dir, "probe_stage", "done.json").exists()
    # the stage trained the classifier only, with observers frozen
    changed = [n for n in seen["before"] if not torch.equal(seen["before"][n], seen["after"][n])]
    assert changed and all(n.startswith("classifier.") for n in changed), changed
    assert seen["buffers"] and all(torch.equal(seen["buffers"][n], seen["buffers_after"][n]) for n in seen["buffers"])
    # the probe's own parameter group kept its LR (the scheduler starts from it)
    groups = {g["name"]: g for g in result.job.trainer.optimizers[0].param_groups}
    assert groups["probe_head"]["initial_lr"] == PROBE_LR and groups["probe_head"]["weight_decay"] == 0.0
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["initial_lr"] == cfg.optim.lr
    summary = json.loads(Path(cfg.paths.output_dir, "summary.json").read_text())
    assert summary["early_exit/steps_seen"] == 3 and summary["early_exit/option"] == "none"  # _target_ overridden


class Clashing(Method):
    def incompatible_with(self, group, other):
        return "needs float weights" if group == "quantizer" and getattr(other, "enabled", False) else None


def test_incompatible_options_fail_in_one_line_naming_both(make_cfg):
    cfg = make_cfg([*TINY_RUN, "early_exit._target_=test_core_contract.Clashing", "quantizer=uniform"])
    with pytest.raises(LowbitConfigError) as err:
        build_methods(cfg, {"early_exit": "clashing", "quantizer": "uniform"})
    assert str(err.value) == "early_exit=clashing cannot be combined with quantizer=uniform: needs float weights"
    build_methods(make_cfg([*TINY_RUN, "early_exit._target_=test_core_contract.Clashing"]))  # quantizer=none: fine


def test_optimizer_is_a_config_and_lat_requires_adam(make_cfg):
    from lowbit.pipeline import setup

    cfg = make_cfg([*TINY_RUN, "quantizer=ternary_lat", "bit_assignment=w2e2", "optim.optimizer._target_=torch.optim.SGD",
                    "~optim.optimizer.eps"])
    with pytest.raises(LowbitConfigError, match="quantizer=ternary_lat reads Adam's second moment"):
        setup(cfg)
    cfg = make_cfg([*TINY_RUN, "quantizer=uniform", "optim.optimizer._target_=torch.optim.SGD", "~optim.optimizer.eps",
                    "+optim.optimizer.momentum=0.9", "optim.scheduler=null"])
    job = setup(cfg)
    optimizer = job.module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9


def test_deploy_fake_backend_and_unknown_backend(tiny_model, batch):
    from lowbit.deploy import deploy

    model = tiny_model("bert")
    quantize_(model, UniformRecipe(activation=None), uniform_bits(4))
    ref = model(**batch).logits
    assert torch.equal(deploy(model, {}, "fake")(**batch).logits, ref)
    with pytest.raises(LowbitConfigError, match="unknown deploy backend 'tpu'; known: exit_runner, fake, int8_cpu"):
        deploy(model, {}, "tpu")


def test_lowbit_layers_lists_every_wrapped_layer(tiny_model):
    model = tiny_model("bert")
    quantize_(model, UniformRecipe(activation=None), uniform_bits(4, word_embedding_bits=4))
    names = [n for n, _ in lowbit_layers(model)]
    assert len(names) == 12 + 1 + 1 and "classifier" not in names
