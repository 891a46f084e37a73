"""pruning=movement / soft_movement against Sanh et al.'s code (binarizers, schedule, L1 term), a hand-computed SGD step,
training runs, baking, checkpoint and export round trips, parameter groups, one-line errors."""

from __future__ import annotations

import copy
import inspect
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import CONF, TINY_RUN
from omegaconf import OmegaConf
from torch import autograd, nn

from lowbit.algorithms import METHOD_CARDS
from lowbit.algorithms.effects import EffectContext, ternary_weights
from lowbit.algorithms.pruning import (
    MovementPruning,
    ScoredMask,
    SoftMovementPruning,
    cubic_sparsity,
    movement_sparsity_reached,
    sigmoid_l1,
    soft_movement_in_effect,
    straight_through,
    threshold_keep,
    topk_masks,
)
from lowbit.builder import build_methods, prepare_model
from lowbit.errors import LowbitConfigError
from lowbit.layers import LowbitLinear
from lowbit.roles import ENCODER_LINEAR_ROLES, find_targets

STEPS_RUN = [o for o in TINY_RUN if o != "trainer.fast_dev_run=true"]  # 32 samples / batch 8: 4 steps an epoch


# -- the authors' code, as the oracle ------------------------------------------------------------------------------
# huggingface/transformers examples/research_projects/movement-pruning/emmental/modules/binarizer.py and
# masked_run_glue.py (Apache-2.0), copied as they are apart from formatting: the reference these tests compare to.
class SanhThresholdBinarizer(autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, threshold: float, sigmoid: bool):
        nb_elems = inputs.numel()
        nb_min = int(0.005 * nb_elems) + 1
        if sigmoid:
            mask = (torch.sigmoid(inputs) > threshold).type(inputs.type())
        else:
            mask = (inputs > threshold).type(inputs.type())
        if mask.sum() < nb_min:
            k_threshold = inputs.flatten().kthvalue(max(nb_elems - nb_min, 1)).values
            mask = (inputs > k_threshold).type(inputs.type())
        return mask

    @staticmethod
    def backward(ctx, gradOutput):
        return gradOutput, None, None


class SanhTopKBinarizer(autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, threshold: float):
        mask = inputs.clone()
        _, idx = inputs.flatten().sort(descending=True)
        j = int(threshold * inputs.numel())
        flat_out = mask.flatten()
        flat_out[idx[j:]] = 0
        flat_out[idx[:j]] = 1
        return mask

    @staticmethod
    def backward(ctx, gradOutput):
        return gradOutput, None


def sanh_schedule_threshold(step, total_step, warmup_steps, initial_threshold, final_threshold, initial_warmup,
                            final_warmup, final_lambda):
    if step <= initial_warmup * warmup_steps:
        threshold = initial_threshold
    elif step > (total_step - final_warmup * warmup_steps):
        threshold = final_threshold
    else:
        spars_warmup_steps = initial_warmup * warmup_steps
        spars_schedu_steps = (final_warmup + initial_warmup) * warmup_steps
        mul_coeff = 1 - (step - spars_warmup_steps) / (total_step - spars_schedu_steps)
        threshold = final_threshold + (initial_threshold - final_threshold) * (mul_coeff**3)
    regu_lambda = final_lambda * threshold / final_threshold
    return threshold, regu_lambda


def sanh_regularization(model: nn.Module, mode: str):
    regu, counter = 0, 0
    for name, param in model.named_parameters():
        if "mask_scores" in name:
            if mode == "l1":
                regu += torch.norm(torch.sigmoid(param), p=1) / param.numel()
            elif mode == "l0":
                regu += torch.sigmoid(param - 2 / 3 * np.log(0.1 / 1.1)).sum() / param.numel()
            counter += 1
    return regu / counter


# -- binarizers ----------------------------------------------------------------------------------------------------
def _ours_topk(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    return straight_through(scores, topk_masks({"s": scores}, sparsity)["s"])


@pytest.mark.parametrize("shape", [(8, 12), (64, 32), (5, 7), (96, 24)])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75, 0.9, 0.97])
def test_topk_binarizer_equals_the_authors_forward_and_gradient(shape, sparsity):
    """Same mask as their TopKBinarizer for the same number kept (the count rule is the next test), same gradient."""
    g = torch.Generator().manual_seed(int(sparsity * 100) + shape[0] * 1000 + shape[1])
    scores = torch.randn(*shape, generator=g)
    n = scores.numel()
    n_keep = n - round(sparsity * n)
    ours_in, theirs_in = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    ours = _ours_topk(ours_in, sparsity)
    theirs = SanhTopKBinarizer.apply(theirs_in, (n_keep + 0.5) / n)  # int(·n) = n_keep exactly
    assert int(ours.sum()) == n_keep and torch.equal(ours, theirs)
    upstream = torch.randn(*shape, generator=g)
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    assert torch.equal(ours_in.grad, theirs_in.grad) and torch.equal(ours_in.grad, upstream)  # straight through


@pytest.mark.parametrize("shape, sparsity, theirs_kept, ours_kept", [
    ((10, 10), 0.9, 9, 10),  # (1 − 0.9)·100 = 9.999999999999998: floored to 9
    ((5, 7), 0.75, 8, 9),  # 0.25·35 = 8.75: floored; ours prunes round(26.25) = 26
    ((64, 32), 0.5, 1024, 1024),  # most settings agree
])
def test_topk_count_rule_where_it_differs_from_the_authors(shape, sparsity, theirs_kept, ours_kept):
    """Theirs keeps int((1 − s)·n); ours prunes round(s·n), as magnitude pruning (MaP and MvP keep the same count)."""
    scores = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    theirs = SanhTopKBinarizer.apply(scores, 1 - sparsity)
    ours = _ours_topk(scores, sparsity)
    assert int(theirs.sum()) == theirs_kept and int(ours.sum()) == ours_kept
    assert bool((theirs <= ours).all())  # the same top scores, ours at most one more


@pytest.mark.parametrize("threshold", [0.05, 0.1, 0.5, 0.9])
def test_threshold_binarizer_equals_the_authors_forward_and_gradient(threshold):
    g = torch.Generator().manual_seed(int(threshold * 100))
    scores = 2 * torch.randn(40, 30, generator=g)
    ours_in, theirs_in = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    ours = straight_through(ours_in, threshold_keep(ours_in, threshold))
    theirs = SanhThresholdBinarizer.apply(theirs_in, threshold, True)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours.bool(), torch.sigmoid(scores) > threshold)  # the definition, away from the floor
    upstream = torch.randn(40, 30, generator=g)
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    assert torch.equal(ours_in.grad, theirs_in.grad) and torch.equal(ours_in.grad, upstream)


def test_threshold_binarizer_keeps_half_a_percent_like_the_authors():
    scores = -10 - torch.rand(50, 40, generator=torch.Generator().manual_seed(1))  # σ(S) < 1e-4 everywhere
    ours = threshold_keep(scores, 0.1)
    theirs = SanhThresholdBinarizer.apply(scores, 0.1, True)
    assert int(ours.sum()) == int(0.005 * 2000) + 1 == 11
    assert torch.equal(ours.float(), theirs)
    assert scores[ours].min() > scores[~ours].max()  # the largest scores survive


def test_global_topk_keeps_the_highest_scores_over_the_union():
    g = torch.Generator().manual_seed(2)
    scores = {"a": torch.randn(8, 12, generator=g), "b": torch.randn(5, 7, generator=g) - 1.0}
    masks = topk_masks(scores, 0.6, "global")
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    n_keep = flat.numel() - round(0.6 * flat.numel())
    kth = flat.sort(descending=True).values[n_keep - 1]  # by hand: the n_keep-th highest score
    for name, s in scores.items():
        assert torch.equal(masks[name], s >= kth), name
    assert sum(int(m.sum()) for m in masks.values()) == n_keep
    assert float(masks["b"].float().mean()) < float(masks["a"].float().mean())  # low-score matrix loses more


# -- schedule and penalty ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("warmups", [(1, 2), (0, 1), (2, 3)])
def test_schedules_equal_the_authors_schedule_threshold(warmups):
    """Hard: their kept fraction = 1 − our sparsity. Soft: their threshold and regu_lambda = our τ_t and λ_t."""
    total, warmup_steps = 120, 12
    a, b = warmups
    iw, fw = a * warmup_steps / total, b * warmup_steps / total
    hard = MovementPruning(final_sparsity=0.85, initial_warmup=iw, final_warmup=fw)
    soft = SoftMovementPruning(threshold=0.1, initial_threshold=0.0, penalty=400.0, initial_warmup=iw, final_warmup=fw)
    for step in range(total):
        kept, _ = sanh_schedule_threshold(step, total, warmup_steps, 1.0, 0.15, a, b, 0.0)
        sparsity, embedding = hard.scheduled_sparsity(step, total)
        assert sparsity == pytest.approx(1 - kept, abs=1e-12) and embedding is None, step
        assert sparsity == cubic_sparsity(step, total, 0.0, 0.85, iw, fw)  # the magnitude schedule, shared
        tau, lam = sanh_schedule_threshold(step, total, warmup_steps, 0.0, 0.1, a, b, 400.0)
        ours_tau, ours_lam = soft.scheduled_threshold(step, total)
        assert ours_tau == pytest.approx(tau, abs=1e-12) and ours_lam == pytest.approx(lam, rel=1e-9, abs=1e-9), step
    constant = SoftMovementPruning(penalty=7.0, penalty_schedule="constant", initial_warmup=iw, final_warmup=fw)
    assert {constant.scheduled_threshold(s, total)[1] for s in range(total)} == {7.0}


def test_l1_term_equals_the_authors_regularization(tiny_model, make_cfg):
    g = torch.Generator().manual_seed(3)
    scores = [torch.randn(6, 4, generator=g), 3 * torch.randn(10, 2, generator=g), torch.randn(3, 3, generator=g) - 2]
    holder = nn.Module()
    for i, s in enumerate(scores):
        layer = nn.Module()
        layer.mask_scores = nn.Parameter(s.clone())
        holder.add_module(f"l{i}", layer)
    expected = sanh_regularization(holder, "l1")
    assert torch.allclose(sigmoid_l1(scores), expected, rtol=1e-6, atol=0)
    by_definition = sum(float(torch.sigmoid(s).abs().sum()) / s.numel() for s in scores) / len(scores)
    assert float(sigmoid_l1(scores)) == pytest.approx(by_definition, rel=1e-6)
    # the method's loss term: λ_t · that, over its own score tensors
    cfg = make_cfg(["pruning=soft_movement", "pruning.score_init=uniform", "pruning.score_init_scale=3"])
    methods = build_methods(cfg, choices={"pruning": "soft_movement"})
    prepare_model(tiny_model("bert"), methods, "train")
    method = methods["pruning"]
    method.set_threshold(0.1, 123.0)
    (term,) = method.loss_terms()
    value = term(None, None, 0)["scores_l1"]
    assert float(value.detach()) == pytest.approx(123.0 * float(sigmoid_l1(method.score_parameters())), rel=1e-6)
    value.backward()  # the penalty's gradient reaches every score: λ·σ'(S) / (numel · L)
    (_, mask) = next(iter(method.encoder.values()))
    s = mask.scores.detach()
    expected_grad = 123.0 * torch.sigmoid(s) * (1 - torch.sigmoid(s)) / s.numel() / len(method.encoder)
    assert torch.allclose(mask.scores.grad, expected_grad, rtol=1e-5, atol=1e-12)


# -- the mask transform and one hand-computed step ------------------------------------------------------------------
def _movement_model(tiny_model, make_cfg, overrides=(), option="movement", seed=0):
    cfg = make_cfg([f"pruning={option}", *overrides])
    methods = build_methods(cfg, choices={"pruning": option})
    model = tiny_model("bert", seed=seed)
    float_copy = copy.deepcopy(model)
    prepare_model(model, methods, "train")
    return model, float_copy, methods


def test_scored_mask_layer_equals_the_authors_masked_linear():
    """A LowbitLinear with a ScoredMask = their MaskedLinear(pruning_method=topK): outputs and both gradients."""
    torch.manual_seed(4)
    linear = nn.Linear(12, 7)
    theirs_scores = nn.Parameter(torch.randn(7, 12))
    ours = LowbitLinear.from_linear(copy.deepcopy(linear))
    mask = ScoredMask(ours.weight.shape)
    with torch.no_grad():
        mask.scores.copy_(theirs_scores)
    ours.add_transform("weight", "pruning", mask)
    mask.set_mask(topk_masks({"s": mask.scores}, 0.4)["s"])
    x = torch.randn(5, 12)
    ours_out = ours(x)
    theirs_out = F.linear(x, SanhTopKBinarizer.apply(theirs_scores, 0.6) * linear.weight, linear.bias)
    assert torch.equal(ours_out, theirs_out)
    ours_out.square().sum().backward()
    theirs_out.square().sum().backward()
    assert torch.equal(mask.scores.grad, theirs_scores.grad)
    assert torch.equal(ours.weight.grad, linear.weight.grad)


def test_one_sgd_step_moves_scores_by_minus_lr_w_dl_dw(tiny_model, make_cfg, batch):
    """Scores: −lr_s·W⊙G, weights: −lr·M⊙G, with G = ∂L/∂(W⊙M) from a plain HF model holding the masked weights."""
    model, reference, methods = _movement_model(tiny_model, make_cfg, ["pruning.score_init=uniform",
                                                                       "pruning.score_init_scale=1"])
    method = methods["pruning"]
    method.set_sparsity(0.5)
    layers = {name: (layer, mask) for name, (layer, mask) in method.encoder.items()}
    with torch.no_grad():  # the reference holds W ⊙ M: its weight gradient is G by definition
        for name, (layer, mask) in layers.items():
            reference.get_submodule(name).weight.copy_(layer.weight * mask.mask)
    labels = torch.tensor([0, 1, 1])
    model.eval(), reference.eval()  # no dropout: both forwards are the same function
    before = {name: (layer.weight.detach().clone(), mask.scores.detach().clone(), mask.mask.clone())
              for name, (layer, mask) in layers.items()}
    (group,) = method.param_groups(model)
    assert group.lr == 0.01 and group.weight_decay == 0.0
    lr_scores, lr_weights = 0.5, 0.1
    score_ids = {id(p) for p in group.params}
    rest = [p for p in model.parameters() if id(p) not in score_ids]
    optimizer = torch.optim.SGD([{"params": group.params, "lr": lr_scores}, {"params": rest, "lr": lr_weights}])
    optimizer.zero_grad()
    model(**batch, labels=labels).loss.backward()
    reference(**batch, labels=labels).loss.backward()
    optimizer.step()
    for name, (layer, mask) in layers.items():
        w, s, keep = before[name]
        grad_eff = reference.get_submodule(name).weight.grad  # G = ∂L/∂(W ⊙ M)
        assert grad_eff.abs().sum() > 0, name
        torch.testing.assert_close(mask.scores.detach(), s - lr_scores * w * grad_eff, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(layer.weight.detach(), w - lr_weights * keep * grad_eff, rtol=1e-5, atol=1e-9)


def test_scores_are_their_own_parameter_group_without_decay(tiny_model, make_cfg):
    from lowbit.module import CompressionModule

    model, _, methods = _movement_model(tiny_model, make_cfg, ["pruning.score_lr=0.03"])
    module = CompressionModule(model, SimpleNamespace(), methods, None,
                               [pg for m in methods.values() for pg in m.param_groups(model)])
    groups = {g["name"]: g for g in module.optimizer_param_groups()}
    scores = {id(p) for p in methods["pruning"].score_parameters()}
    assert len(scores) == 12
    assert {id(p) for p in groups["pruning_scores"]["params"]} == scores
    assert groups["pruning_scores"]["lr"] == 0.03 and groups["pruning_scores"]["weight_decay"] == 0.0
    assert not scores & {id(p) for name in ("decay", "no_decay") for p in groups[name]["params"]}
    assert MovementPruning().score_lr == 0.01 and SoftMovementPruning().score_lr == 0.01  # the authors' default


def test_score_inits_are_the_authors_init_mask():
    shape = (6, 20)
    assert torch.equal(ScoredMask(shape).scores.detach(), torch.zeros(shape))  # mask_init=constant, mask_scale=0
    assert torch.equal(ScoredMask(shape, "constant", 0.7).scores.detach(), torch.full(shape, 0.7))
    torch.manual_seed(5)
    uniform = ScoredMask(shape, "uniform", 0.3).scores.detach()
    torch.manual_seed(5)
    assert torch.equal(uniform, torch.empty(shape).uniform_(-0.3, 0.3))
    torch.manual_seed(6)
    kaiming = ScoredMask(shape, "kaiming").scores.detach()
    torch.manual_seed(6)
    expected = torch.empty(shape)
    nn.init.kaiming_uniform_(expected, a=math.sqrt(5))
    assert torch.equal(kaiming, expected) and kaiming.abs().max() <= 1 / math.sqrt(20)  # bound 1/sqrt(fan_in)


def test_mask_sits_before_the_quantizer_and_scores_get_gradients_through_it(tiny_model, make_cfg, batch):
    model, _, methods = _movement_model(tiny_model, make_cfg, ["quantizer=ternary_twn", "bit_assignment=w2e2"])
    method = methods["pruning"]
    for t in find_targets(model, *ENCODER_LINEAR_ROLES):
        assert list(t.module.weight_transforms) == ["pruning", "quantizer"]
    with torch.no_grad():
        for _, mask in method.encoder.values():
            mask.scores.copy_(torch.randn_like(mask.scores))
    method.set_sparsity(0.7)
    model.train()
    model(**batch, labels=torch.tensor([0, 1, 1])).loss.backward()
    for name, (layer, mask) in method.encoder.items():
        assert mask.scores.grad is not None and mask.scores.grad.abs().sum() > 0, name
        with torch.no_grad():
            w = layer.effective_weight()
            scale = float(layer.weight_qparams().scale)
        assert not w[~mask.mask].any() and set(w.unique().tolist()) <= {-scale, 0.0, scale}, name


# -- baking and checkpoints ----------------------------------------------------------------------------------------
def test_bake_keeps_the_mask_and_checkpoints_reload_either_way():
    torch.manual_seed(7)
    training = LowbitLinear(10, 6)
    mask = ScoredMask(training.weight.shape, "uniform", 1.0)
    training.add_transform("weight", "pruning", mask)
    mask.set_mask(threshold_keep(mask.scores, 0.5))
    x = torch.randn(4, 10)
    with torch.no_grad():
        expected = training(x)
    training_state = copy.deepcopy(training.state_dict())
    # a training checkpoint (scores kept) into a baked (deploy) layer: the mask it ran with, scores dropped
    deploy = LowbitLinear(10, 6)
    deploy.add_transform("weight", "pruning", ScoredMask(deploy.weight.shape, baked=True))
    assert deploy.load_state_dict(training_state, strict=True) is not None
    assert deploy.weight_transforms["pruning"].baked and torch.equal(deploy.weight_mask, mask.mask)
    with torch.no_grad():
        assert torch.equal(deploy(x), expected)
    # baking keeps the Parameter object (optimizer groups stay) and the outputs
    scores = mask.scores
    mask.bake()
    assert mask.scores is scores and mask.scores.numel() == 0 and mask.baked and mask.row_separable
    with torch.no_grad():
        assert torch.equal(training(x), expected)
    baked_state = training.state_dict()
    assert baked_state["weight_transforms.pruning.scores"].numel() == 0
    # a baked checkpoint into a training layer (scores): it bakes, same outputs
    fresh = LowbitLinear(10, 6)
    fresh.add_transform("weight", "pruning", ScoredMask(fresh.weight.shape))
    fresh.load_state_dict(baked_state, strict=True)
    assert fresh.weight_transforms["pruning"].baked
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def test_card_run_reaches_the_target_bakes_and_the_effect_catches_no_pruning(make_cfg):
    from lowbit.pipeline import train

    card = METHOD_CARDS.get("pruning/movement")
    result = train(make_cfg([*TINY_RUN, "pruning=movement", *card.test_overrides]))
    job, metrics = result.job, result.metrics
    assert card.effect is movement_sparsity_reached and card.effect(EffectContext(job.model, metrics, job.methods))
    assert metrics["pruning/sparsity"] == 0.5 and metrics["pruning/target_sparsity"] == 0.5
    assert metrics["pruning/baked"] is True
    assert metrics["pruning/embedding_sparsity"] == pytest.approx(0.6, abs=1e-4)
    per_module = {k: v for k, v in metrics.items() if k.startswith("pruning/sparsity/")}
    assert len(per_module) == 13 and metrics["pruning/sparsity/bert.encoder.layer.1.output.dense"] == 0.5
    method = job.methods["pruning"]
    for _, mask in method.encoder.values():  # an option that pruned nothing fails its effect
        mask.set_mask(torch.ones_like(mask.mask))
    with pytest.raises(AssertionError, match="encoder Linear masks are 0.0000 sparse"):
        card.effect(EffectContext(job.model, {}, job.methods))


def test_effects_catch_unbaked_scores(tiny_model, make_cfg):
    model, _, methods = _movement_model(tiny_model, make_cfg, ["pruning.final_sparsity=0.5"])
    methods["pruning"].set_sparsity(0.5)
    with pytest.raises(AssertionError, match="not baked"):
        movement_sparsity_reached(EffectContext(model, {}, methods))
    methods["pruning"].bake()
    assert movement_sparsity_reached(EffectContext(model, {}, methods))
    model, _, methods = _movement_model(tiny_model, make_cfg, option="soft_movement")
    methods["pruning"].bake()  # baked but dense, and no penalty logged
    with pytest.raises(AssertionError, match="pruned nothing"):
        soft_movement_in_effect(EffectContext(model, {"pruning/sparsity": 0.0}, methods))


def test_soft_card_run_prunes_by_the_penalty(make_cfg):
    from lowbit.pipeline import train

    card = METHOD_CARDS.get("pruning/soft_movement")
    result = train(make_cfg([*TINY_RUN, "pruning=soft_movement", *card.test_overrides]))
    job, metrics = result.job, result.metrics
    assert card.effect is soft_movement_in_effect and card.effect(EffectContext(job.model, metrics, job.methods))
    assert metrics["train/global_step"] == 2 and metrics["pruning/baked"] is True
    assert 0 < metrics["pruning/sparsity"] < 1 and metrics["pruning/penalty_weight"] == 400.0
    assert metrics["train/loss_scores_l1"] > 0


def test_gradual_movement_run_follows_the_schedule_and_bakes_the_last_masks(make_cfg, monkeypatch):
    from lowbit.pipeline import train

    seen, baked_at = [], {}
    update, bake = MovementPruning.update_masks, MovementPruning.bake

    def spy_update(self, step, total):
        update(self, step, total)
        seen.append((step, total, self.measured_sparsity()[0]))

    def spy_bake(self, optimizers=()):
        baked_at.update({name: mask.mask.clone() for name, (_, mask) in self.encoder.items()})
        bake(self, optimizers)

    monkeypatch.setattr(MovementPruning, "update_masks", spy_update)
    monkeypatch.setattr(MovementPruning, "bake", spy_bake)
    result = train(make_cfg([*STEPS_RUN, "trainer.max_steps=4", "pruning=movement", "pruning.final_sparsity=0.6",
                             "pruning.initial_warmup=0", "pruning.final_warmup=0.1"]))
    expected = [cubic_sparsity(s, 4, 0.0, 0.6, 0.0, 0.1) for s in range(4)]
    assert [s for s, _, _ in seen] == [0, 1, 2, 3] and {t for _, t, _ in seen} == {4}
    assert [m for _, _, m in seen] == pytest.approx(expected, abs=1e-3)
    method = result.job.methods["pruning"]
    assert method.baked and result.metrics["pruning/sparsity"] == pytest.approx(0.6, abs=1e-3)  # round(0.6·n) per matrix
    for name, (_, mask) in method.encoder.items():  # baking kept the masks of the last step
        assert torch.equal(mask.mask, baked_at[name]), name


def _write_run_config(cfg) -> Path:
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    return run_dir


@pytest.mark.parametrize("option", ["movement", "soft_movement"])
def test_train_with_ternary_then_export_and_reload_equal_logits(option, make_cfg, tmp_path):
    from lowbit import load_packed
    from lowbit.export.__main__ import export_checkpoint
    from lowbit.pipeline import train
    from lowbit.size import size_report

    overrides = [o for o in STEPS_RUN if o != "callbacks=none"] + [
        "callbacks=default", "~callbacks.progress_bar", "trainer.max_steps=3", f"pruning={option}",
        "quantizer=ternary_twn", "bit_assignment=w2e2", "pruning.initial_warmup=0", "pruning.final_warmup=0",
        "pruning.embedding_sparsity=0.6"]
    overrides += ["pruning.final_sparsity=0.9"] if option == "movement" else ["pruning.score_lr=5"]
    cfg = make_cfg(overrides)
    result = train(cfg)
    ctx = EffectContext(result.job.model, result.metrics, result.job.methods)
    assert METHOD_CARDS.get(f"pruning/{option}").effect(ctx) and ternary_weights()(ctx)
    model = result.job.model.eval()
    # the scores are gone from what is stored: the size report counts no 32-bit scores
    stored_scores = [n for n, p in model.named_parameters() if n.endswith(".scores") and p.numel()]
    assert not stored_scores
    facts = export_checkpoint(_write_run_config(cfg) / "checkpoints" / "last.ckpt", tmp_path / "packed")
    assert facts["reload_max_abs_logit_diff"] == 0.0
    loaded = load_packed(tmp_path / "packed")
    meta = json.loads((tmp_path / "packed" / "lowbit.json").read_text())
    batch = {"input_ids": torch.randint(5, 100, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    for t in find_targets(model, *ENCODER_LINEAR_ROLES):
        restored = loaded.get_submodule(t.name)
        assert restored.weight_transforms["pruning"].baked
        if meta["packed"][t.name]["sparse"] != "dense":
            assert torch.equal(restored.weight_mask, t.module.weight_mask), t.name
    assert size_report(loaded).total_bits == size_report(model).total_bits


def test_a_baked_run_resumes_with_fixed_masks(make_cfg):
    """``ckpt_path=last`` after a finished run: the baked checkpoint loads into a fresh (scored) build, training goes on
    with the same optimizer groups, the masks do not move."""
    from lowbit.pipeline import train

    base = [o for o in STEPS_RUN if o != "callbacks=none"] + [
        "callbacks=default", "~callbacks.progress_bar", "data.max_train_samples=48", "trainer.max_epochs=3",
        "pruning=movement", "pruning.final_sparsity=0.5", "pruning.initial_warmup=0", "pruning.final_warmup=0"]
    first = train(make_cfg([*base, "trainer.max_steps=2"]))
    masks = {name: mask.mask.clone() for name, (_, mask) in first.job.methods["pruning"].encoder.items()}
    second = train(make_cfg([*base, "trainer.max_steps=4", "ckpt_path=last"]))
    assert second.metrics["train/global_step"] == 4
    method = second.job.methods["pruning"]
    assert method.baked and second.metrics["pruning/sparsity"] == 0.5
    for name, (_, mask) in method.encoder.items():
        assert torch.equal(mask.mask, masks[name]), name


# -- options -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, option, value", [
    (MovementPruning, "final_sparsity", 1.0), (MovementPruning, "final_sparsity", "most"),
    (MovementPruning, "initial_sparsity", 0.95), (MovementPruning, "scope", "per_row"),
    (MovementPruning, "initial_warmup", 1.0), (MovementPruning, "final_warmup", -0.1),
    (MovementPruning, "score_lr", 0), (MovementPruning, "score_lr", float("nan")),
    (MovementPruning, "score_init", "xavier"), (MovementPruning, "score_init_scale", "big"),
    (MovementPruning, "embedding_sparsity", 1.5), (MovementPruning, "embedding_roles", ["classifier"]),
    (SoftMovementPruning, "threshold", 0.0), (SoftMovementPruning, "threshold", 1.0),
    (SoftMovementPruning, "initial_threshold", 0.2), (SoftMovementPruning, "penalty", -1.0),
    (SoftMovementPruning, "penalty_schedule", "linear"), (SoftMovementPruning, "score_lr", -0.01),
    (SoftMovementPruning, "embedding_roles", []),
])
def test_bad_options_are_one_line_errors_naming_the_option(cls, option, value):
    with pytest.raises(LowbitConfigError) as err:
        cls(**{option: value})
    message = str(err.value)
    assert f"pruning.{option}" in message and "\n" not in message


def test_bad_option_from_the_command_line(make_cfg):
    cfg = make_cfg(["pruning=soft_movement", "pruning.threshold=1.5"])
    with pytest.raises(LowbitConfigError, match=r"^pruning.threshold must be in \(0, 1\) .*got 1.5$"):
        build_methods(cfg, choices={})


@pytest.mark.parametrize("option, cls", [("movement", MovementPruning), ("soft_movement", SoftMovementPruning)])
def test_yaml_lists_every_constructor_option_with_its_default(option, cls):
    yaml_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "pruning" / f"{option}.yaml"))
    params = inspect.signature(cls.__init__).parameters
    assert set(yaml_cfg) - {"_target_"} == set(params) - {"self"}
    for name, value in yaml_cfg.items():
        if name != "_target_":
            default = params[name].default
            assert value == (list(default) if isinstance(default, tuple) else default), name
