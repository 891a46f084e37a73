"""attention_span=adaptive: the mask against its definition, per-head spans at any batch size, the span loss
against the official formula, gradients, the clamp, the own LR group, trimmed (banded) evaluation against the
full masked attention, one-line errors, combinations that train, export and reload."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY_RUN
from omegaconf import OmegaConf

from lowbit import load_packed
from lowbit.algorithms import METHOD_CARDS
from lowbit.algorithms.attention_span import AdaptiveSpan, AdaptiveSpanMask, SpanCallback, span_mask, spans_in_effect
from lowbit.algorithms.attention_span.effect import recording_band_calls
from lowbit.algorithms.effects import EffectContext
from lowbit.attention import HOOKS_ATTR, band_block, banded_attention
from lowbit.builder import build_methods, prepare_model
from lowbit.errors import LowbitConfigError
from lowbit.roles import find_targets

TWO_STEPS = [o for o in TINY_RUN if o != "trainer.fast_dev_run=true"] + ["trainer.fast_dev_run=2"]


def prepared(model, **options) -> AdaptiveSpan:
    method = AdaptiveSpan(**options)
    method.group, method.option = "attention_span", "adaptive"
    prepare_model(model, {"attention_span": method})
    return method


def set_fractions(method: AdaptiveSpan, *per_layer) -> None:
    with torch.no_grad():
        for mask, values in zip(method.masks, per_layer):
            mask.span_fraction.copy_(torch.as_tensor(values, dtype=torch.float32).reshape(-1, 1, 1))


# -- the mask ----------------------------------------------------------------------------------------------------------
def test_mask_formula_on_hand_computed_values():
    # z = 2, R = 4: 1 up to distance 2, then 0.75, 0.5, 0.25, and 0 from z + R = 6 on
    distance = torch.arange(9.0)
    got = span_mask(distance, torch.tensor(2.0), 4.0)
    assert got.tolist() == [1, 1, 1, 0.75, 0.5, 0.25, 0, 0, 0]


def test_module_masks_both_directions_per_head_and_renormalises():
    mask = AdaptiveSpanMask(num_heads=2, max_span=8, ramp=4, init=0.25)  # z = 2 tokens
    with torch.no_grad():
        mask.span_fraction[1] = 0.5  # head 1: z = 4
    probs = torch.full((1, 2, 9, 9), 1 / 9)
    out = mask(probs)
    # head 0, query 4: distances 4 3 2 1 0 1 2 3 4 on both sides
    row = torch.tensor([0.5, 0.75, 1, 1, 1, 1, 1, 0.75, 0.5])
    torch.testing.assert_close(out[0, 0, 4], row / row.sum())
    # head 0, query 0 (one direction only): 1 1 1 .75 .5 .25 0 0 0
    row = torch.tensor([1, 1, 1, 0.75, 0.5, 0.25, 0, 0, 0])
    torch.testing.assert_close(out[0, 0, 0], row / row.sum())
    # head 1, query 8 (keys before it): z = 4 -> 1 up to 4, then .75 .5 .25, 0 at 8
    row = torch.tensor([0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1])
    torch.testing.assert_close(out[0, 1, 8], row / row.sum())
    assert mask.spans().tolist() == [2.0, 4.0] and mask.window() == 7  # m(x) > 0 iff x < max z + R = 8


def test_window_is_the_farthest_key_with_weight():
    mask = AdaptiveSpanMask(num_heads=3, max_span=20, ramp=3, init=0.1)
    for fractions, expected in (([0.1, 0.05, 0.0], 4), ([0.0, 0.0, 0.0], 2), ([0.13, 0.0, 0.2], 6), ([1.0, 0, 0], 22)):
        with torch.no_grad():
            mask.span_fraction.copy_(torch.tensor(fractions).reshape(-1, 1, 1))
        reach = max(fractions) * 20 + 3  # m(x) > 0 iff x < z + R
        assert mask.window() == expected == math.ceil(reach) - 1
        m = mask.mask(torch.arange(40.0))
        assert bool((m[:, expected + 1:] == 0).all()) and bool((m[:, expected] > 0).any())


def test_spans_are_per_head_whatever_the_batch_size():
    """Train at batch 4, evaluate at 3 and 1: the same mask per head (EdgeBERT's [batch, heads] spans skip it)."""
    torch.manual_seed(0)
    mask = AdaptiveSpanMask(num_heads=4, max_span=16, ramp=2, init=0.2)
    opt = torch.optim.SGD(mask.parameters(), lr=0.1)
    probs = torch.softmax(torch.randn(4, 4, 12, 12), -1)
    (mask(probs) * torch.randn_like(probs)).sum().backward()
    opt.step()
    assert tuple(mask.span_fraction.shape) == (4, 1, 1)
    with torch.no_grad():
        out4 = mask(probs)
        out3, out1 = mask(probs[:3]), mask(probs[:1])
    torch.testing.assert_close(out3, out4[:3])
    torch.testing.assert_close(out1, out4[:1])
    assert (out1 - probs[:1]).abs().max() > 0.1  # the mask applied at batch 1 too


# -- loss, gradient, clamp, LR -----------------------------------------------------------------------------------------
def test_span_loss_is_the_official_formula_summed_over_layers(tiny_model):
    method = prepared(tiny_model(), max_span=512, ramp=256, loss_coeff=5e-6)
    set_fractions(method, [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5])
    # adaptive-span's get_loss: loss_coeff * max_span * current_val.mean(), summed over layers by its trainer
    expected = 5e-6 * 512 * 0.25 + 5e-6 * 512 * 0.5
    (term,) = method.loss_terms()
    got = term(None, {}, 0)
    assert set(got) == {"span"} and math.isclose(float(got["span"].detach()), expected, rel_tol=1e-6)
    got["span"].backward()
    for mask in method.masks:  # d/d fraction_h = coeff * max_span / heads
        torch.testing.assert_close(mask.span_fraction.grad, torch.full((4, 1, 1), 5e-6 * 512 / 4))
    assert prepared(tiny_model(), loss_coeff=0.0).loss_terms() == []


def test_short_span_with_vanishing_weight_inside_keeps_gradients_finite(tiny_model):
    """The MNLI ablation's NaN at step 94: spans near 0 keep only keys the softmax gave ~4e-44 (every query
    attends to key 0 with a score gap of 100), so p·m sums to a denormal and the old 1/Σ(p·m) backward
    overflowed. The output is still the definition p·m / Σ p·m (computed in float64) and every gradient
    (Q, K, V, the spans) is finite."""
    from lowbit.attention import lowbit_attention_forward

    model = tiny_model()
    method = prepared(model, max_span=16, ramp=2, init=0.05)
    mask = method.masks[0]
    set_fractions(method, [0.0, 0.0, 0.01, 0.02])
    attention = find_targets(model, "self_attention")[0].module.train()
    length, dim = 24, 8
    q = torch.zeros(1, 4, length, dim)
    k = torch.zeros(1, 4, length, dim)
    q[..., 0], k[:, :, 0, 0] = 1.0, 100.0 * dim ** 0.5  # score 100 on key 0, 0 elsewhere
    v = torch.randn(1, 4, length, dim)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = lowbit_attention_forward(attention, q, k, v, None)[0]
    (out * torch.randn_like(out)).sum().backward()
    for name, grad in (("q", q.grad), ("k", k.grad), ("v", v.grad), ("span", mask.span_fraction.grad)):
        assert grad is not None and bool(torch.isfinite(grad).all()), f"{name}: non-finite gradient"
    scores = torch.zeros(4, length, length, dtype=torch.float64)
    scores[..., 0] = 100.0
    pos = torch.arange(length)
    weights = torch.softmax(scores, -1) * mask.mask((pos[:, None] - pos[None, :]).abs()).double()
    expected = (weights / weights.sum(-1, keepdim=True)) @ v.detach()[0].double()
    torch.testing.assert_close(out.detach()[0].transpose(0, 1).double(), expected, rtol=1e-5, atol=1e-6)


def test_task_gradient_reaches_every_span(tiny_model):
    model = tiny_model()
    method = prepared(model, max_span=16, ramp=4, init=0.25, loss_coeff=0.0)
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(3, 120, (2, 20))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    for mask in method.masks:
        assert mask.span_fraction.grad is not None and bool((mask.span_fraction.grad != 0).all())


def test_clamp_keeps_fractions_in_0_1_and_logs_the_mean_span(tiny_model):
    method = prepared(tiny_model(), max_span=16, ramp=4, init=0.25)
    set_fractions(method, [-0.5, 0.2, 1.5, 0.9], [0.1, 0.1, 0.1, 2.0])
    # before the clamp, the mask already uses clamped values (spans 0 and 16, never -8 or 24)
    assert method.masks[0].spans().tolist() == pytest.approx([0.0, 3.2, 16.0, 14.4])
    logged = {}
    module = SimpleNamespace(log=lambda name, value, **kw: logged.__setitem__(name, value))
    SpanCallback(method).on_train_batch_end(None, module, None, None, 0)
    assert method.masks[0].span_fraction.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0, 0.9])
    assert method.masks[1].span_fraction.flatten().tolist() == pytest.approx([0.1, 0.1, 0.1, 1.0])
    assert logged["attention_span/mean_span"] == pytest.approx(16 * (2.1 + 1.3) / 8)


@pytest.mark.parametrize("lr", [0.01, None])
def test_span_parameters_have_their_own_group(lr, tiny_model):
    from lowbit.data.tasks import GLUE_TASKS
    from lowbit.methods import all_param_groups
    from lowbit.module import CompressionModule

    model = tiny_model()
    method = prepared(model, lr=lr)
    module = CompressionModule(model, GLUE_TASKS.get("sst2"), {"attention_span": method}, None,
                               all_param_groups({"attention_span": method}, model))
    groups = {g["name"]: g for g in module.optimizer_param_groups()}
    span = groups["attention_span"]
    assert [id(p) for p in span["params"]] == [id(m.span_fraction) for m in method.masks]
    assert span.get("lr") == lr and span["weight_decay"] == 0.0
    others = {id(p) for name, g in groups.items() if name != "attention_span" for p in g["params"]}
    assert not others & {id(p) for p in span["params"]}
    names = {n for n, _ in model.named_parameters()}
    assert sum(n.endswith("lowbit_attention.probs.attention_span.span_fraction") for n in names) == 2


# -- trimmed evaluation --------------------------------------------------------------------------------------------------
def reference_attention(q, k, v, additive_mask, scaling, spans, ramp):
    """Softmax over all keys, times m(|i - j|) per head, rows renormalised: the definition, written out."""
    scores = (q @ k.transpose(-1, -2)) * scaling
    if additive_mask is not None:
        scores = scores + additive_mask
    probs = torch.softmax(scores, -1)
    pos = torch.arange(q.size(2), dtype=q.dtype)
    distance = (pos[:, None] - pos[None, :]).abs()
    m = ((ramp + spans.reshape(-1, 1, 1) - distance) / ramp).clamp(0, 1)
    probs = probs * m
    probs = probs / probs.sum(-1, keepdim=True)
    return (probs @ v).transpose(1, 2)


@pytest.mark.parametrize("length,ramp,fractions", [
    (9, 2.0, [0.0, 0.1, 0.05, 0.2]), (33, 4.0, [0.1, 0.25, 0.0, 0.05]), (50, 3.0, [0.02, 0.02, 0.3, 0.1]),
    (64, 8.0, [0.3, 0.0, 0.0, 0.0]), (17, 1.0, [0.0, 0.0, 0.0, 0.0])])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("block", [1, 5, 16, 32])
def test_banded_attention_equals_the_definition(length, ramp, fractions, padded, block):
    torch.manual_seed(length)
    batch, heads, dim = 3, 4, 8
    q, k, v = (torch.randn(batch, heads, length, dim) for _ in range(3))
    additive = None
    if padded:
        keep = torch.ones(batch, length, dtype=torch.bool)
        keep[1, length // 2:] = False
        keep[2, 3:] = False
        additive = torch.zeros(batch, 1, length, length).masked_fill(~keep[:, None, None, :],
                                                                      torch.finfo(torch.float32).min)
    mask = AdaptiveSpanMask(heads, max_span=32, ramp=ramp, init=0.1)
    with torch.no_grad():
        mask.span_fraction.copy_(torch.tensor(fractions).reshape(-1, 1, 1))
    window = mask.window()
    expected = reference_attention(q, k, v, additive, dim ** -0.5, mask.spans(), ramp)
    got = banded_attention(q, k, v, additive, dim ** -0.5, mask, window, block)
    if padded:  # a padded query whose window holds only padding: 0 in both (the full softmax gives those keys 0)
        torch.testing.assert_close(got, torch.nan_to_num(expected), rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_band_runs_where_it_pays():
    assert band_block(15, 128) == 16 and band_block(16, 64) is None  # 16 + 2·16 = 48 keys > 64 / 2
    assert band_block(16, 96) == 16 and band_block(17, 512) == 32 and band_block(63, 512) == 32
    assert band_block(31, 128) is None  # 32 + 62 keys per block of 128: the full product is faster
    assert band_block(16, 95) is None and band_block(0, 31) is None and band_block(0, 32) == 16


@pytest.mark.parametrize("length", [12, 40, 63])
@pytest.mark.parametrize("fractions", [(0.05, 0.1), (0.0, 0.3), (0.5, 0.5)])
def test_trimmed_model_equals_full_model(length, fractions, tiny_model, monkeypatch):
    """Every layer's attention output (padded positions included) and the logits, trimming on vs off; blocks
    of 4 rows, so that the band also runs at these short lengths."""
    monkeypatch.setattr("lowbit.attention.band_block", lambda w, n: 4 if 4 + 2 * w < n else None)
    model = tiny_model()
    method = prepared(model, max_span=16, ramp=3, init=0.1)
    torch.manual_seed(1)
    with torch.no_grad():
        for mask, f in zip(method.masks, fractions):
            mask.span_fraction.copy_(torch.rand(4, 1, 1) * f)
    ids = torch.randint(3, 120, (3, length))
    attention = torch.ones_like(ids)
    attention[1, length // 3:] = 0
    outputs, banded = {}, []
    targets = find_targets(model, "self_attention")
    hooks = [t.module.register_forward_hook(lambda mod, a, out, name=t.name: outputs.setdefault(name, []).append(out[0]))
             for t in targets]
    with torch.no_grad(), recording_band_calls(method.masks) as calls:
        for trim in (False, True):
            calls.clear()
            for m in method.masks:
                m.trim = trim
            logits = model(input_ids=ids, attention_mask=attention).logits
            outputs.setdefault("logits", []).append(logits)
            banded.append(list(calls))
    for h in hooks:
        h.remove()
    for name, (full, trimmed) in outputs.items():
        torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5, msg=name)
    windows = [m.window() for m in method.masks]
    assert banded[0] == [False] * len(windows)  # trim off: the full path
    assert banded[1] == [4 + 2 * w < length for w in windows]  # trim on: banded wherever the band is narrower


def test_training_and_integer_codes_take_the_full_path(tiny_model):
    from lowbit.attention import lowbit_attention_forward
    from lowbit.codes import attach

    model = tiny_model()
    method = prepared(model, max_span=16, ramp=2, init=0.05)
    with recording_band_calls(method.masks) as banded:
        model.train()
        model(input_ids=torch.randint(3, 120, (2, 40)))
        assert banded == [False, False]  # training: the one full path (dropout, gradients)
        attention = find_targets(model, "self_attention")[0].module.eval()
        banded.clear()
        with torch.no_grad():
            q, k, v = (torch.randn(2, 4, 40, 8) for _ in range(3))
            plain = lowbit_attention_forward(attention, q, k, v, None)[0]
            codes = torch.randint(-127, 128, q.shape).double()
            q = attach(codes.float() * 0.01, codes, torch.tensor(0.01))  # Q carries 8-bit codes (I-BERT evaluation)
            recorded = lowbit_attention_forward(attention, q, k, v, None)[0]
    assert banded == [True, False]  # codes: the integer products are recorded on the full path
    assert plain.shape == recorded.shape


# -- errors ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,message", [
    ({"max_span": 0}, "attention_span.max_span must be an integer >= 1 (tokens), got 0"),
    ({"max_span": 12.5}, "attention_span.max_span must be an integer >= 1 (tokens), got 12.5"),
    ({"ramp": -1}, "attention_span.ramp must be in (0, attention_span.max_span=512] (tokens), got -1"),
    ({"ramp": 0}, "attention_span.ramp must be in (0, attention_span.max_span=512] (tokens), got 0"),
    ({"max_span": 64, "ramp": 256}, "attention_span.ramp must be in (0, attention_span.max_span=64] (tokens), got 256"),
    ({"init": 0}, "attention_span.init must be in (0, 1] (a fraction of max_span), got 0"),
    ({"init": 1.5}, "attention_span.init must be in (0, 1] (a fraction of max_span), got 1.5"),
    ({"loss_coeff": -1e-6}, "attention_span.loss_coeff must be >= 0, got -1e-06"),
    ({"lr": 0}, "attention_span.lr must be null (the optimizer's) or > 0, got 0"),
    ({"lr": -0.01}, "attention_span.lr must be null (the optimizer's) or > 0, got -0.01"),
    ({"trim_at_inference": "yes"}, "attention_span.trim_at_inference must be true or false, got 'yes'"),
])
def test_bad_options_are_one_line_errors_before_training(options, message, make_cfg):
    with pytest.raises(LowbitConfigError) as err:
        AdaptiveSpan(**options)
    assert str(err.value) == message
    overrides = [f"attention_span.{k}={'null' if v is None else v}" for k, v in options.items()]
    cfg = make_cfg(["attention_span=adaptive", *overrides])
    with pytest.raises(LowbitConfigError) as err:
        build_methods(cfg, {})
    assert str(err.value) == message and "\n" not in str(err.value)


def test_a_model_without_self_attention_is_one_line():
    from transformers import BertConfig

    class NoAttention(torch.nn.Module):
        config = BertConfig(num_attention_heads=2, hidden_size=8)

        def __init__(self):
            super().__init__()
            self.dense = torch.nn.Linear(8, 8)

    with pytest.raises(LowbitConfigError) as err:
        prepared(NoAttention())
    assert str(err.value).startswith("attention_span=adaptive: the model has no self-attention") and \
        "\n" not in str(err.value)


def test_int8_cpu_deploy_is_refused_in_one_line(tiny_model):
    from lowbit.deploy import deploy

    model = tiny_model()
    method = prepared(model)
    with pytest.raises(LowbitConfigError) as err:
        deploy(model, {"attention_span": method}, "int8_cpu")
    assert str(err.value) == ("deploy backend int8_cpu cannot run attention_span=adaptive: "
                              "its integer attention has no span mask")
    assert deploy(model, {"attention_span": method}, "fake") is model


# -- runs --------------------------------------------------------------------------------------------------------------
def _train(make_cfg, overrides, base=tuple(TWO_STEPS)):
    from lowbit.pipeline import train

    cfg = make_cfg([*base, *overrides])
    return cfg, train(cfg)


def test_option_trains_and_reports_spans_per_layer_and_head(make_cfg):
    card = METHOD_CARDS.get("attention_span/adaptive")
    _, result = _train(make_cfg, ["attention_span=adaptive", *card.test_overrides])
    m = result.metrics
    assert result.job.trainer.global_step == 2
    assert m["attention_span/max_span"] == 16 and m["attention_span/ramp"] == 4.0
    per_head = [m[f"attention_span/span/layer_{i}/head_{h}"] for i in range(2) for h in range(4)]
    assert m["attention_span/mean_span"] == pytest.approx(sum(per_head) / 8)
    assert m["attention_span/span/layer_1"] == pytest.approx(sum(per_head[4:]) / 4)
    assert all(0 <= z <= 16 for z in per_head) and len(set(per_head)) > 1  # spans moved (own LR 1e-2), per head
    assert m["train/loss_span"] > 0
    assert spans_in_effect(EffectContext(result.job.model, m, result.job.methods)) is True


@pytest.mark.parametrize("others", [
    ["pruning=magnitude", "pruning.final_sparsity=0.5", "pruning.final_warmup=0"],
    ["quantizer=ibert", "approximation=ibert", "bit_assignment.bits=8"],
], ids=["magnitude_pruning", "ibert"])
def test_combinations_train_two_steps(others, make_cfg):
    card = METHOD_CARDS.get("attention_span/adaptive")
    _, result = _train(make_cfg, ["attention_span=adaptive", *card.test_overrides, *others])
    assert result.job.trainer.global_step == 2
    ctx = EffectContext(result.job.model, result.metrics, result.job.methods)
    for group in ("attention_span", "pruning", "quantizer", "approximation"):
        assert METHOD_CARDS.get(f"{group}/{result.job.methods[group].option}").effect(ctx) is not False
    if "quantizer=ibert" in others:  # the span mask renormalises before the 2^-8 softmax-output quantizer
        for t in find_targets(result.job.model, "self_attention"):
            probs = getattr(t.module, HOOKS_ATTR).probs
            assert list(probs) == ["attention_span", "quantizer_softmax_output"]


def test_export_and_reload_give_equal_logits_and_spans(make_cfg, tmp_path):
    from lowbit.export.__main__ import export_checkpoint

    run = [o for o in TINY_RUN if o not in ("callbacks=none", "trainer.fast_dev_run=true")]
    overrides = [
        "callbacks=default", "~callbacks.progress_bar", "trainer.max_steps=2", "+trainer.limit_val_batches=1",
        "attention_span=adaptive", *METHOD_CARDS.get("attention_span/adaptive").test_overrides,
        "quantizer=ternary_twn", "bit_assignment=w2e2"]
    cfg, result = _train(make_cfg, overrides, base=run)
    assert result.job.trainer.global_step == 2
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    facts = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "packed")
    assert facts["reload_max_abs_logit_diff"] == 0.0
    reloaded = load_packed(tmp_path / "packed")
    spans = {n: p for n, p in reloaded.named_parameters() if n.endswith("span_fraction")}
    trained = {n: p for n, p in result.job.model.named_parameters() if n.endswith("span_fraction")}
    assert spans.keys() == trained.keys() and len(spans) == 2
    for name, p in spans.items():
        assert torch.equal(p, trained[name].detach())
    assert not all(torch.equal(p, torch.full_like(p, 0.25)) for p in spans.values())  # the trained spans, not init


# -- benchmark ---------------------------------------------------------------------------------------------------------
def test_benchmark_writes_both_paths_and_their_parity(tmp_path, one_thread):  # one_thread: restores the count
    from lowbit.bench import attention_span as bench

    out = tmp_path / "bench.json"
    result = bench.main(["--seq-lens", "64", "--reaches", "4", "32", "--batch-size", "2", "--heads", "2",
                         "--head-dim", "4", "--repeats", "1", "--out", str(out)])
    assert yaml.safe_load(out.read_text()) == result  # JSON is YAML
    short, wide = result["rows"]
    assert (short["reach"], short["window"], short["block"]) == (4, 3, 16)
    assert short["products_ratio"] == 64 * 22 / 64**2 and short["max_abs_diff"] < 1e-5
    assert wide["block"] is None and wide["products_ratio"] == 1.0  # 32 + 62 keys per block: the full path runs
    assert set(short["median_s"]) == {"full", "trimmed"} and result["threads"] == 1
