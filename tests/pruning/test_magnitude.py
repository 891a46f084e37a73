"""pruning=magnitude: masks by hand, the cubic schedule against its formula and Sanh et al.'s code, training runs,
composition with ternary weights, size accounting, packed export, one-line errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_RUN, payload_bytes
from omegaconf import OmegaConf

from lowbit import load_packed
from lowbit.algorithms import METHOD_CARDS
from lowbit.algorithms.effects import EffectContext, ternary_weights
from lowbit.algorithms.pruning import (
    GradualPruningCallback,
    MagnitudePruning,
    WeightMask,
    cubic_sparsity,
    magnitude_masks,
    sparsity_reached,
)
from lowbit.builder import build_methods, prepare_model
from lowbit.errors import LowbitConfigError
from lowbit.export import export_packed
from lowbit.layers import lowbit_layers
from lowbit.methods import METHOD_ORDER
from lowbit.pipeline import train
from lowbit.roles import ENCODER_LINEAR_ROLES, find_targets
from lowbit.size import size_report

#: TINY_RUN that trains real steps (no fast_dev_run): 32 samples in batches of 8 = 4 steps per epoch
STEPS_RUN = [o for o in TINY_RUN if o != "trainer.fast_dev_run=true"]


# -- masks ---------------------------------------------------------------------------------------
def _weights_with_ties(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # values on a coarse grid: many exact ties in |w|, so the tie rule matters
    return {"a": torch.randint(-6, 7, (8, 12), generator=g).float() / 4,
            "b": torch.randint(-6, 7, (5, 7), generator=g).float() / 8,
            "c": torch.randn(3, 4, generator=g)}


def _top_by_hand(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Keep the n_keep largest; a stable descending sort puts the lower index first among equal scores."""
    order = torch.sort(scores.reshape(-1), descending=True, stable=True).indices
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order[:n_keep]] = True
    return keep.reshape(scores.shape)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_per_matrix_masks_keep_exactly_the_largest_magnitudes(sparsity):
    weights = _weights_with_ties()
    masks = magnitude_masks(weights, sparsity, "per_matrix")
    for name, w in weights.items():
        n_prune = round(sparsity * w.numel())
        assert masks[name].dtype == torch.bool and masks[name].shape == w.shape
        assert int((~masks[name]).sum()) == n_prune, name
        assert torch.equal(masks[name], _top_by_hand(w.abs(), w.numel() - n_prune)), name
        if 0 < n_prune < w.numel():  # survivors are never smaller than the pruned
            assert w.abs()[masks[name]].min() >= w.abs()[~masks[name]].max()


def test_per_matrix_masks_match_topk_without_ties():
    w = torch.randn(16, 24, generator=torch.Generator().manual_seed(3))
    keep = magnitude_masks({"w": w}, 0.6, "per_matrix")["w"]
    n_keep = w.numel() - round(0.6 * w.numel())
    expected = torch.zeros(w.numel(), dtype=torch.bool)
    expected[torch.topk(w.abs().reshape(-1), n_keep).indices] = True
    assert torch.equal(keep.reshape(-1), expected)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_global_masks_keep_the_largest_over_the_union(sparsity):
    weights = _weights_with_ties(1)
    weights["b"] = weights["b"] * 0.1  # a matrix of small weights: pruned more under one global threshold
    masks = magnitude_masks(weights, sparsity, "global")
    flat = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    n_prune = round(sparsity * flat.numel())
    expected = _top_by_hand(flat, flat.numel() - n_prune)
    assert torch.equal(torch.cat([masks[n].reshape(-1) for n in weights]), expected)
    per_matrix = {n: 1 - float(m.float().mean()) for n, m in masks.items()}
    assert per_matrix["b"] > sparsity > per_matrix["a"]


def test_masks_are_deterministic_under_ties():
    w = torch.ones(6, 6)
    keep = magnitude_masks({"w": w}, 0.5, "per_matrix")["w"]
    assert torch.equal(keep.reshape(-1), torch.arange(36) < 18)  # all equal: the first half survives


# -- schedule ------------------------------------------------------------------------------------
def _closed_form(step, total, s_i, s_f, iw, fw):
    """Sparsity by the formula: initial until i0, cubic ramp to E = min(T(1-fw), T-1), final from E on."""
    i0, end = iw * total, min(total * (1 - fw), total - 1)
    if step >= end:
        return s_f
    if step <= i0:
        return s_i
    return s_f + (s_i - s_f) * (1 - (step - i0) / (end - i0)) ** 3


def _sanh_schedule_threshold(step, total_step, warmup_steps, initial_threshold, final_threshold, initial_warmup,
                             final_warmup):
    """Sanh et al.'s ``schedule_threshold`` (masked_run_glue.py), written from its formula.

    Returns the fraction of weights *kept*; the warmups are multiples of the LR warmup steps.
    """
    if step <= initial_warmup * warmup_steps:
        return initial_threshold
    if step > total_step - final_warmup * warmup_steps:
        return final_threshold
    spars_warmup_steps = initial_warmup * warmup_steps
    spars_schedu_steps = (final_warmup + initial_warmup) * warmup_steps
    mul_coeff = 1 - (step - spars_warmup_steps) / (total_step - spars_schedu_steps)
    return final_threshold + (initial_threshold - final_threshold) * mul_coeff ** 3


def test_cubic_schedule_closed_form_and_endpoints():
    total, s_i, s_f, iw, fw = 200, 0.1, 0.9, 0.1, 0.2  # i0 = 20, E = 160
    for step in (0, 10, 20, 21, 50, 90, 120, 159, 160, 161, 199, 250):
        expected = _closed_form(step, total, s_i, s_f, iw, fw)
        assert cubic_sparsity(step, total, s_i, s_f, iw, fw) == pytest.approx(expected), step
    assert cubic_sparsity(0, total, s_i, s_f, iw, fw) == s_i
    assert cubic_sparsity(20, total, s_i, s_f, iw, fw) == s_i  # end of the initial warmup
    assert cubic_sparsity(90, total, s_i, s_f, iw, fw) == pytest.approx(0.9 - 0.8 * 0.5 ** 3)  # halfway up the ramp
    assert cubic_sparsity(160, total, s_i, s_f, iw, fw) == s_f  # the last 20% of the steps at the final sparsity
    assert cubic_sparsity(199, total, s_i, s_f, iw, fw) == s_f
    values = [cubic_sparsity(s, total, s_i, s_f, iw, fw) for s in range(total)]
    assert all(a <= b for a, b in itertools.pairwise(values))  # never decreases


@pytest.mark.parametrize("sanh_warmups", [(1, 2), (0, 1), (2, 3)])
def test_cubic_schedule_equals_sanh_schedule_threshold(sanh_warmups):
    total, warmup_steps = 120, 12  # LR warmup: 10% of the steps
    a, b = sanh_warmups
    s_i, s_f = 0.0, 0.85  # Sanh: initial_threshold 1.0 (keep all), final_threshold 0.15
    for step in range(total):
        kept = _sanh_schedule_threshold(step, total, warmup_steps, 1 - s_i, 1 - s_f, a, b)
        ours = cubic_sparsity(step, total, s_i, s_f, a * warmup_steps / total, b * warmup_steps / total)
        assert ours == pytest.approx(1 - kept, abs=1e-12), step


@pytest.mark.parametrize("total", [1, 2, 4, 7, 100])
def test_final_sparsity_at_the_last_step_without_final_warmup(total):
    for iw in (0.0, 0.5):
        assert cubic_sparsity(total - 1, total, 0.0, 0.7, iw, 0.0) == 0.7
    # Sanh's schedule with final_warmup=0 never gets there: its ramp ends at step T
    assert 1 - _sanh_schedule_threshold(total - 1, total, 1, 1.0, 0.3, 0, 0) < 0.7
    assert cubic_sparsity(total - 1, total, 0.0, 0.7, 0.0, 0.1) == 0.7  # nor with a final warmup under one step


def test_four_step_schedule_values():
    values = [cubic_sparsity(s, 4, 0.0, 0.5, 0.0, 0.1) for s in range(4)]  # E = min(3.6, 3) = 3
    assert values == pytest.approx([0.0, 0.5 * (1 - (2 / 3) ** 3), 0.5 * (1 - (1 / 3) ** 3), 0.5])


# -- the mask transform --------------------------------------------------------------------------
def test_weight_mask_transform_contract():
    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    t = WeightMask(w.shape)
    assert t.kind == "mask" and t.chain_order == 10 and t.packed_buffers == ("mask",) and t.row_separable
    assert t.mask.dtype == torch.bool and bool(t.mask.all()) and "mask" in t.state_dict()
    buffer, key = t.mask, t.cache_key()
    keep = magnitude_masks({"w": w}, 0.5)["w"]
    t.set_mask(keep)
    assert t.mask is buffer and t.cache_key() != key  # in place, and cached weights see the change
    out = t(w)
    assert torch.equal(out, w.detach() * keep)
    out.sum().backward()
    assert torch.equal(w.grad, keep.float())  # pruned weights get zero gradient
    rows = torch.tensor([4, 0, 4])
    assert torch.equal(t.forward_rows(w[rows], rows), out[rows])
    with pytest.raises(LowbitConfigError, match="shape"):
        t.set_mask(torch.ones(5, 6, dtype=torch.bool))


def _pruned_model(tiny_model, make_cfg, overrides, seed=0):
    """The tiny model with the methods of ``overrides`` prepared on it (no training)."""
    cfg = make_cfg(["pruning=magnitude", *overrides])
    methods = build_methods(cfg, choices={"pruning": "magnitude"})
    model = tiny_model("bert", seed=seed)
    prepare_model(model, methods, "train")
    return model, methods, cfg


def test_pruned_weights_are_zero_and_get_zero_gradient(tiny_model, batch, make_cfg):
    model, _, _ = _pruned_model(tiny_model, make_cfg, ["pruning.schedule=oneshot", "pruning.final_sparsity=0.6",
                                                             "pruning.embedding_sparsity=0.6"])
    layers = dict(lowbit_layers(model))
    assert len(layers) == 13  # 12 encoder Linears + the word embedding
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch, labels=torch.tensor([0, 1, 1])).loss.backward()
        for name, layer in layers.items():
            mask = layer.weight_mask
            assert float(1 - mask.float().mean()) == pytest.approx(0.6, abs=1e-3), name
            assert not layer.weight.grad[~mask].any(), f"{name}: a pruned weight got a gradient"
            assert layer.weight.grad[mask].abs().sum() > 0 or "word" in name, name
        optimizer.step()
        with torch.no_grad():
            for name, layer in layers.items():
                assert not layer.effective_weight()[~layer.weight_mask].any(), name
    # the eval cache follows a mask change
    layer = layers["bert.encoder.layer.0.attention.self.query"]
    with torch.no_grad():
        before = layer.effective_weight().clone()
        layer.transform_of_kind("mask").set_mask(torch.ones_like(layer.weight_mask))
        assert torch.equal(layer.effective_weight(), layer.weight) and not torch.equal(before, layer.weight)


def test_gradual_callback_updates_every_n_steps_and_at_the_last(tiny_model, make_cfg):
    _, methods, _ = _pruned_model(tiny_model, make_cfg, ["pruning.update_every=3", "pruning.final_warmup=0",
                                                             "pruning.embedding_sparsity=0.4"])
    method = methods["pruning"]
    assert method.measured_sparsity() == (0.0, 0.0)  # cubic: dense until the first step
    (callback,) = method.callbacks()
    assert isinstance(callback, GradualPruningCallback)
    logged = []
    module = SimpleNamespace(log=lambda name, value, **kw: logged.append((name, value)))
    seen = []
    for step in range(5):
        callback.on_train_batch_start(SimpleNamespace(global_step=step, estimated_stepping_batches=5), module, None, 0)
        seen.append(method.measured_sparsity()[0])
    # updates at steps 0 and 3 (update_every) and 4 (the last step)
    expected = [cubic_sparsity(s, 5, 0.0, 0.5, 0.0, 0.0) for s in (0, 0, 0, 3, 4)]
    assert seen == pytest.approx(expected, abs=1e-3) and seen[-1] == 0.5
    assert [v for n, v in logged if n == "pruning/sparsity"] == seen
    assert [v for n, v in logged if n == "pruning/embedding_sparsity"][-1] == pytest.approx(0.4, abs=1e-3)
    assert MagnitudePruning(schedule="oneshot").callbacks() == []


# -- composition with a quantizer ----------------------------------------------------------------
TERNARY = ["quantizer=ternary_twn", "bit_assignment=w2e2"]


def test_mask_before_ternary_quantizer_and_smaller_size(tiny_model, make_cfg):
    # ternary codes cost 1.6 bits; a bitmap 1 bit per weight: pruning pays off above 62.5% sparsity
    pruned, _, _ = _pruned_model(tiny_model, make_cfg, [*TERNARY, "pruning.schedule=oneshot",
                                                              "pruning.final_sparsity=0.9"])
    cfg = make_cfg(["pruning=none", *TERNARY])
    dense = tiny_model("bert")
    prepare_model(dense, build_methods(cfg, choices={}), "train")
    report, dense_report = size_report(pruned), size_report(dense)
    targets = find_targets(pruned, *ENCODER_LINEAR_ROLES)
    assert len(targets) == 12
    for t in targets:
        layer = t.module
        assert list(layer.weight_transforms) == ["pruning", "quantizer"]
        assert [tr.kind for tr in layer.weight_transforms.values()] == ["mask", "quantizer"]
        mask = layer.weight_mask
        with torch.no_grad():
            w = layer.effective_weight()
            qp = layer.weight_qparams()
        assert float(1 - mask.float().mean()) == pytest.approx(0.9, abs=1e-3)
        assert not w[~mask].any()  # pruned positions are zero in the ternary weight
        assert set(w.unique().tolist()) <= {-float(qp.scale), 0.0, float(qp.scale)}
        survivors = layer.weight.detach().abs().clamp(max=2.5)[mask]
        assert float(qp.threshold) == pytest.approx(0.7 * float(survivors.mean()), rel=1e-5)  # Δ over survivors
        storage = report.layers[t.name]
        assert storage.format in ("bitmap", "csr", "delta") and storage.kept == int(mask.sum())
        assert storage.total_bits < dense_report.layers[t.name].total_bits
        assert dense_report.layers[t.name].format == "dense"
    assert report.total_bits < dense_report.total_bits


@pytest.mark.parametrize("sparsity,stored", [(0.9, ("bitmap", "csr", "delta")), (0.5, ("dense",))])
def test_pruned_ternary_export_round_trip(sparsity, stored, tiny_model, batch, make_cfg, tmp_path):
    """At 90% the survivors' trits + an index are cheapest; at 50% dense trits (1.6 bits) beat a bitmap (1 + 0.8)."""
    model, methods, cfg = _pruned_model(tiny_model, make_cfg, [*TERNARY, "pruning.schedule=oneshot",
                                                               f"pruning.final_sparsity={sparsity}",
                                                               "pruning.embedding_sparsity=0.6"])
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        weights = {n: layer.effective_weight().clone() for n, layer in lowbit_layers(model)}
    masks = {n: layer.weight_mask.clone() for n, layer in lowbit_layers(model) if layer.weight_mask is not None}
    assert len(masks) == 13
    configs = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in ("quantizer", "bit_assignment", "pruning")}
    export_packed(model, tmp_path / "art", configs, methods)
    meta = json.loads((tmp_path / "art" / "lowbit.json").read_text())
    loaded = load_packed(tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)
        for name, w in weights.items():
            assert torch.equal(loaded.get_submodule(name).weight, w), name
    for name, mask in masks.items():
        if ".encoder." not in name:
            continue
        assert meta["packed"][name]["sparse"] in stored
        restored = loaded.get_submodule(name).weight_mask
        assert restored is loaded.get_submodule(name).weight_transforms["pruning"].mask
        # a sparse format stores the mask; dense stores every code (pruned ones as 0) and reloads an all-True mask
        assert torch.equal(restored, mask if stored != ("dense",) else torch.ones_like(mask)), name
    assert size_report(loaded).total_bits == size_report(model).total_bits
    assert size_report(model).total_bits == 8 * payload_bytes(tmp_path / "art" / "model.safetensors")


# -- training runs -------------------------------------------------------------------------------
def test_card_run_reaches_the_target_and_the_effect_catches_no_pruning(make_cfg):
    card = METHOD_CARDS.get("pruning/magnitude")
    result = train(make_cfg([*TINY_RUN, "pruning=magnitude", *card.test_overrides]))
    job, metrics = result.job, result.metrics
    ctx = EffectContext(job.model, metrics, job.methods)
    assert card.effect is sparsity_reached and card.effect(ctx) is True
    assert metrics["pruning/sparsity"] == 0.5 and metrics["pruning/target_sparsity"] == 0.5
    assert metrics["pruning/embedding_sparsity"] == pytest.approx(0.6, abs=1e-4)
    assert metrics["pruning/sparsity/bert.encoder.layer.1.output.dense"] == 0.5
    # the same model with its masks cleared (an option that did nothing) fails the effect
    for _, mask in job.methods["pruning"].encoder.values():
        mask.set_mask(torch.ones_like(mask.mask))
    with pytest.raises(AssertionError, match="encoder Linear masks are 0.0000 sparse"):
        card.effect(EffectContext(job.model, {}, job.methods))


def test_gradual_run_reaches_final_sparsity_at_the_last_step(make_cfg, monkeypatch):
    calls = []
    update = MagnitudePruning.update_masks

    def spy(self, sparsity, embedding_sparsity=None):
        update(self, sparsity, embedding_sparsity)
        calls.append((sparsity, self.measured_sparsity()[0]))

    monkeypatch.setattr(MagnitudePruning, "update_masks", spy)
    result = train(make_cfg([*STEPS_RUN, "trainer.max_steps=4", "pruning=magnitude", "pruning.final_sparsity=0.5"]))
    assert result.metrics["train/global_step"] == 4
    scheduled = [cubic_sparsity(s, 4, 0.0, 0.5, 0.0, 0.1) for s in range(4)]
    assert [c[0] for c in calls] == pytest.approx(scheduled)
    assert [c[1] for c in calls] == pytest.approx(scheduled, abs=1e-3)
    assert calls[-1] == (0.5, 0.5) and result.metrics["pruning/sparsity"] == 0.5
    assert sparsity_reached(EffectContext(result.job.model, result.metrics, result.job.methods))


def test_oneshot_masks_do_not_change_during_training(make_cfg, monkeypatch):
    at_prepare = {}
    prepare = MagnitudePruning.prepare

    def spy(self, model, edit):
        prepare(self, model, edit)
        for name, (layer, mask) in self.encoder.items():
            at_prepare[name] = (mask.mask.clone(), layer.weight.detach().clone())

    monkeypatch.setattr(MagnitudePruning, "prepare", spy)
    result = train(make_cfg([*STEPS_RUN, "trainer.max_steps=3", "optim.lr=0.05", "optim.weight_decay=0",
                             "pruning=magnitude", "pruning.schedule=oneshot", "pruning.final_sparsity=0.7"]))
    method = result.job.methods["pruning"]
    weights_now = {name: layer.weight.detach() for name, (layer, _) in method.encoder.items()}
    recomputed = magnitude_masks(weights_now, 0.7)
    moved = 0
    for name, (_, mask) in method.encoder.items():
        keep, weight = at_prepare[name]
        assert torch.equal(keep, magnitude_masks({name: weight}, 0.7)[name])  # from the weights at prepare
        assert torch.equal(mask.mask, keep), f"{name}: a one-shot mask changed in training"
        moved += int(not torch.equal(recomputed[name], keep))
    assert moved > 0  # the weights moved enough that recomputing would have changed masks
    assert sparsity_reached(EffectContext(result.job.model, result.metrics, result.job.methods))


def test_train_then_export_cli(make_cfg, tmp_path):
    """``python train.py +experiment=ternarybert_sst2 model=tiny pruning=magnitude ...``, then ``lowbit.export``.

    ``last.ckpt`` holds the final state (the pipeline writes it after training), so the artifact is the final model.
    """
    import yaml

    from lowbit.export.__main__ import main as export_main

    overrides = [o for o in STEPS_RUN if o != "callbacks=none"] + [
        "+experiment=ternarybert_sst2", "finetune.epochs=1", "callbacks=default", "~callbacks.progress_bar",
        "trainer.max_steps=4", "pruning=magnitude", "pruning.final_sparsity=0.5"]
    cfg = make_cfg(overrides)
    result = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pruning/sparsity"] == pytest.approx(0.5, abs=0.01)
    assert summary["quantizer/option"] == "ternary_twn" and summary["quantizer/quantized_modules"] == 14
    ctx = EffectContext(result.job.model, summary, result.job.methods)
    assert sparsity_reached(ctx) and ternary_weights()(ctx)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    facts = export_main([str(run_dir / "checkpoints" / "last.ckpt"), str(tmp_path / "packed")])
    assert facts["packed_layers"] == 14 and facts["reload_max_abs_logit_diff"] == 0.0
    meta = json.loads((tmp_path / "packed" / "lowbit.json").read_text())
    encoder = {name: spec for name, spec in meta["packed"].items() if ".encoder." in name}
    # 50% pruned ternary: dense trits are cheaper than survivors + bitmap
    assert len(encoder) == 12 and all(s["kind"] == "ternary" and s["sparse"] == "dense" for s in encoder.values())
    loaded = load_packed(tmp_path / "packed")
    batch = {"input_ids": torch.randint(5, 100, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    model = result.job.model.eval()
    with torch.no_grad():  # the packed artifact is the run's final model (last.ckpt holds the final state)
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
        for name in encoder:
            pruned = ~model.get_submodule(name).weight_mask
            exported = loaded.get_submodule(name).weight
            assert torch.equal(exported, model.get_submodule(name).effective_weight()) and (exported[pruned] == 0).all()


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [
    ("final_sparsity", 1.5), ("final_sparsity", 1.0), ("final_sparsity", -0.1), ("final_sparsity", "half"),
    ("initial_sparsity", 0.7), ("schedule", "linear"), ("scope", "per_row"), ("initial_warmup", 1.0),
    ("final_warmup", -0.2), ("update_every", 0), ("update_every", 1.5), ("embedding_sparsity", 1.2),
    ("embedding_roles", ["classifier"]), ("embedding_roles", []), ("embedding_roles", None),
])
def test_bad_options_are_one_line_errors_naming_the_option(option, value):
    with pytest.raises(LowbitConfigError) as err:
        MagnitudePruning(**{option: value})
    message = str(err.value)
    assert f"pruning.{option}" in message and "\n" not in message


def test_warmups_together_must_leave_a_ramp():
    with pytest.raises(LowbitConfigError, match=r"pruning.initial_warmup \+ pruning.final_warmup must be < 1"):
        MagnitudePruning(initial_warmup=0.6, final_warmup=0.4)


def test_bad_option_from_the_command_line(make_cfg):
    cfg = make_cfg(["pruning=magnitude", "pruning.final_sparsity=1.5"])
    with pytest.raises(LowbitConfigError, match=r"^pruning.final_sparsity must be in \[0, 1\), got 1.5$"):
        build_methods(cfg, choices={})


def test_yaml_lists_every_constructor_option():
    import inspect

    from conftest import CONF

    yaml_cfg = OmegaConf.load(CONF / "pruning" / "magnitude.yaml")
    params = set(inspect.signature(MagnitudePruning.__init__).parameters) - {"self"}
    assert set(yaml_cfg) - {"_target_"} == params
    assert METHOD_ORDER.index("pruning") < METHOD_ORDER.index("quantizer")
