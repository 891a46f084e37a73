"""ALBERT shares one encoder layer across depth: pruning (magnitude, movement, soft movement) and quantization (uniform,
ternary) put one mask / one score tensor / one quantizer on each shared weight, count it once, train it from every
occurrence, and export/reload it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_RUN
from omegaconf import OmegaConf

from lowbit.algorithms import METHOD_CARDS
from lowbit.algorithms.effects import EffectContext, ternary_weights, weights_on_grid
from lowbit.algorithms.pruning import ScoredMask, WeightMask
from lowbit.builder import build_methods, prepare_model
from lowbit.layers import lowbit_layers
from lowbit.roles import ENCODER_LINEAR_ROLES, find_targets, num_layers
from lowbit.size import size_report

QUANTIZERS = {"uniform": ["quantizer=uniform", "bit_assignment.bits=4"],
              "ternary_twn": ["quantizer=ternary_twn", "bit_assignment=w2e2"]}
GRID = {"uniform": weights_on_grid(), "ternary_twn": ternary_weights()}
#: the tiny ALBERT of the pipeline: model=tiny with ALBERT's architecture (one shared layer, two occurrences)
ALBERT_RUN = [*TINY_RUN, "model.model_type=albert", "model.name=tiny-albert", "+model.config.embedding_size=16",
              "+model.config.vocab_size=30522"]
SHARED_WEIGHTS = 6  # query, key, value, attention dense, ffn, ffn_output


def _albert(tiny_model, make_cfg, pruning: str, quantizer: str | None, overrides=()):
    cfg = make_cfg([f"pruning={pruning}", *(QUANTIZERS[quantizer] if quantizer else []), *overrides])
    methods = build_methods(cfg, choices={"pruning": pruning})
    model = tiny_model("albert")
    assert model.config.num_hidden_layers == 2 and model.config.num_hidden_groups == 1
    float_model = copy.deepcopy(model)
    prepare_model(model, methods, "train")
    return model, float_model, methods


def _set_masks(method, pruning: str) -> None:
    """Masks at 50% (magnitude, movement: random scores) or σ(S) > 0.5 (soft), as a training step would set them."""
    if pruning == "magnitude":
        method.update_masks(0.5)
        return
    with torch.no_grad():
        for _, mask in method.encoder.values():
            mask.scores.normal_()
    if pruning == "movement":
        method.set_sparsity(0.5)
    else:
        method.set_threshold(0.5, 10.0)


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
@pytest.mark.parametrize("pruning", ["magnitude", "movement", "soft_movement"])
def test_shared_layers_get_one_mask_and_one_quantizer_each(pruning, quantizer, tiny_model, make_cfg, batch):
    torch.manual_seed(0)
    model, _, methods = _albert(tiny_model, make_cfg, pruning, quantizer)
    method = methods["pruning"]
    targets = find_targets(model, *ENCODER_LINEAR_ROLES)
    assert len(targets) == SHARED_WEIGHTS and num_layers(model) == 1 and {t.layer for t in targets} == {0}
    masks = [m for _, m in model.named_modules() if isinstance(m, WeightMask)]
    assert len(masks) == len({id(m) for m in masks}) == SHARED_WEIGHTS  # one per shared weight, not per occurrence
    assert len(method.encoder) == SHARED_WEIGHTS
    if pruning != "magnitude":
        assert all(isinstance(m, ScoredMask) for m in masks)
        (group,) = method.param_groups(model)
        assert len(group.params) == SHARED_WEIGHTS
    for t in targets:
        assert list(t.module.weight_transforms) == ["pruning", "quantizer"], t.name
    _set_masks(method, pruning)
    calls = []
    shared_query = targets[0].module
    handle = shared_query.register_forward_hook(lambda *args: calls.append(1))
    model.train()
    model(**batch, labels=torch.tensor([0, 1, 1])).loss.backward()
    handle.remove()
    assert len(calls) == 2  # the shared layer runs at both depths
    # masks applied, sparsity as set, counted once per shared weight
    numel = pruned = 0
    for t in targets:
        layer, keep = t.module, t.module.weight_mask
        with torch.no_grad():
            assert not layer.effective_weight()[~keep].any(), t.name
        if pruning == "soft_movement":
            scores = layer.weight_transforms["pruning"].scores.detach()
            assert torch.equal(keep, torch.sigmoid(scores) > 0.5), t.name
        else:
            assert int((~keep).sum()) == round(0.5 * keep.numel()), t.name
        numel += keep.numel()
        pruned += int((~keep).sum())
        if pruning == "magnitude":
            assert not layer.weight.grad[~keep].any(), t.name  # pruned weights get no gradient
        else:  # the shared scores receive a gradient (through the quantizer's straight-through estimator)
            grad = layer.weight_transforms["pruning"].scores.grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, t.name
    assert method.measured_sparsity()[0] == pytest.approx(pruned / numel)
    # quantized weights on their grid
    assert GRID[quantizer](EffectContext(model, {}, methods)) is True
    # the size report counts each shared weight once
    report = size_report(model)
    encoder = [name for name in report.layers if name in {t.name for t in targets}]
    assert len(encoder) == SHARED_WEIGHTS
    assert all(report.layers[t.name].kept == int(t.module.weight_mask.sum()) or report.layers[t.name].format == "dense"
               for t in targets)


def test_shared_scores_gradient_is_the_sum_over_occurrences(tiny_model, make_cfg, batch):
    """scores.grad = W ⊙ G, G = ∂L/∂(W ⊙ M) of a plain HF ALBERT holding W ⊙ M: the shared weight's gradient from
    both depths (autograd accumulates them), hand-computed independently of lowbit."""
    torch.manual_seed(1)
    model, reference, methods = _albert(tiny_model, make_cfg, "movement", None)
    method = methods["pruning"]
    _set_masks(method, "movement")
    with torch.no_grad():
        for name, (layer, mask) in method.encoder.items():
            reference.get_submodule(name).weight.copy_(layer.weight * mask.mask)
    model.eval(), reference.eval()
    labels = torch.tensor([0, 1, 1])
    model(**batch, labels=labels).loss.backward()
    reference(**batch, labels=labels).loss.backward()
    one_depth = copy.deepcopy(reference)  # the same weights run at one depth only: a different gradient
    one_depth.config.num_hidden_layers = 1
    one_depth.albert.encoder.config.num_hidden_layers = 1
    one_depth.zero_grad()
    one_depth(**batch, labels=labels).loss.backward()
    for name, (layer, mask) in method.encoder.items():
        grad = reference.get_submodule(name).weight.grad
        torch.testing.assert_close(mask.scores.grad, layer.weight.detach() * grad, rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(layer.weight.grad, mask.mask * grad, rtol=1e-5, atol=1e-10)
        assert not torch.allclose(grad, one_depth.get_submodule(name).weight.grad), name


def _write_run_config(cfg) -> Path:
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    return run_dir


@pytest.mark.parametrize("pruning, quantizer", [("magnitude", "uniform"), ("movement", "ternary_twn"),
                                                ("soft_movement", "uniform")])
def test_albert_trains_prunes_quantizes_exports_and_reloads(pruning, quantizer, make_cfg, tmp_path):
    from lowbit import load_packed
    from lowbit.export.__main__ import export_checkpoint
    from lowbit.pipeline import train

    card = METHOD_CARDS.get(f"pruning/{pruning}")
    overrides = [o for o in ALBERT_RUN if o not in ("callbacks=none", "trainer.fast_dev_run=true")]
    overrides += ["callbacks=default", "~callbacks.progress_bar", "trainer.max_steps=3", f"pruning={pruning}",
                  *[o for o in card.test_overrides if not o.startswith("trainer.")], *QUANTIZERS[quantizer]]
    cfg = make_cfg(overrides)
    result = train(cfg)
    model, metrics = result.job.model.eval(), result.metrics
    assert model.config.model_type == "albert"
    ctx = EffectContext(model, metrics, result.job.methods)
    assert card.effect(ctx) is True and GRID[quantizer](ctx) is True
    per_module = [k for k in metrics if k.startswith("pruning/sparsity/albert.encoder.")]
    assert len(per_module) == SHARED_WEIGHTS  # sparsity counted once per shared weight
    facts = export_checkpoint(_write_run_config(cfg) / "checkpoints" / "last.ckpt", tmp_path / "packed")
    assert facts["reload_max_abs_logit_diff"] == 0.0
    loaded = load_packed(tmp_path / "packed")
    batch = {"input_ids": torch.randint(5, 1000, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    shared = {name for name, _ in lowbit_layers(loaded) if ".albert_layers." in name}
    assert len(shared) == SHARED_WEIGHTS
    assert size_report(loaded).total_bits == size_report(model).total_bits
