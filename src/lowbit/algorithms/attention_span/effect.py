"""The effect of ``attention_span=adaptive``: spans per head that mask, measured from the trained model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lowbit.algorithms.attention_span.adaptive import AdaptiveSpanMask
from lowbit.algorithms.effects import EffectContext
from lowbit.attention import HOOKS_ATTR, Softmax, band_block
from lowbit.roles import find_targets


def _span_masks(model: nn.Module, group: str) -> list[tuple[str, nn.Module, AdaptiveSpanMask]]:
    """(name, hooks, mask) of every self-attention; asserts each carries the group's span mask in ``probs``."""
    found = []
    for t in find_targets(model, "self_attention"):
        hooks = getattr(t.module, HOOKS_ATTR, None)
        mask = hooks.probs[group] if hooks is not None and group in hooks.probs else None
        assert isinstance(mask, AdaptiveSpanMask), f"{t.name}: no span mask in its attention probs slot"
        found.append((t.name, hooks, mask))
    assert found, "no self-attention in the model"
    return found


def _check_mask(name: str, mask: AdaptiveSpanMask) -> None:
    """m = 1 up to each head's span, 0 from span + ramp on, in both directions; rows renormalised."""
    window = mask.window()
    length = 2 * window + 3
    with torch.no_grad():
        probs = torch.full((1, mask.num_heads, length, length), 1.0 / length)
        out = mask(probs)
        pos = torch.arange(length)
        distance = (pos[:, None] - pos[None, :]).abs()
        m = mask.mask(distance)
        for h, z in enumerate(mask.spans().tolist()):
            assert bool((m[h][distance <= z] == 1).all()), f"{name} head {h}: mask < 1 within its span {z:.2f}"
            assert bool((m[h][distance >= z + mask.ramp] == 0).all()), \
                f"{name} head {h}: weight beyond span + ramp ({z + mask.ramp:.2f})"
            assert bool((out[0, h][distance > window] == 0).all()), f"{name} head {h}: weight beyond the window {window}"
        torch.testing.assert_close(out.sum(-1), torch.ones(1, mask.num_heads, length), msg=f"{name}: rows do not sum to 1")
        # the form the attention folds into a float softmax gives the same rows
        folded = torch.softmax(mask.log_weights(distance), dim=-1)
        torch.testing.assert_close(folded, out[0], msg=f"{name}: softmax(s + log m) differs from the mask's rows")


@contextmanager
def recording_band_calls(masks: list[AdaptiveSpanMask]) -> Iterator[list[bool]]:
    """Record, for every use of a mask folded into the softmax, whether it was the banded layout (its
    [block, block + 2W] distances) rather than the full [L, L] one."""
    calls: list[bool] = []
    for mask in masks:
        def log_weights(distance, mask=mask, unwrapped=mask.log_weights):
            calls.append(distance.size(-1) != distance.size(-2))
            return unwrapped(distance)
        mask.log_weights = log_weights  # an instance attribute: shadows the method until deleted
    try:
        yield calls
    finally:
        for mask in masks:
            del mask.log_weights


def _probe_length(model: nn.Module) -> int:
    return min(128, model.config.max_position_embeddings - 2)  # RoBERTa's positions start at padding_idx + 1


def _trimmed_equals_full(ctx: EffectContext, masks) -> bool:
    """Evaluation logits with and without trimming agree; returns whether the banded path ran."""
    model = ctx.model
    config = model.config
    length = _probe_length(model)
    gen = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(0, config.vocab_size, (2, length), generator=gen).to(device)
    attention = torch.ones_like(ids)
    attention[1, length // 2:] = 0
    kwargs = {}
    for method in ctx.methods.values():
        kwargs.update(method.forward_kwargs("eval"))
    was_training, trims = model.training, [m.trim for _, _, m in masks]
    try:
        model.eval()
        with torch.no_grad(), recording_band_calls([m for _, _, m in masks]) as calls:
            for _, _, m in masks:
                m.trim = False
            full = model(input_ids=ids, attention_mask=attention, **kwargs).logits
            for _, _, m in masks:
                m.trim = True
            calls.clear()
            trimmed = model(input_ids=ids, attention_mask=attention, **kwargs).logits
    finally:
        for (_, _, m), t in zip(masks, trims):
            m.trim = t
        model.train(was_training)
    torch.testing.assert_close(trimmed, full, rtol=1e-4, atol=1e-4, msg="trimmed evaluation differs from the full one")
    return any(calls)


def spans_in_effect(ctx: EffectContext) -> bool:
    """Each self-attention has a span per head, registered as model parameters, that masks as defined.

    - a ``span_fraction`` of shape [heads, 1, 1] per self-attention (never per batch slot), a parameter of
      the model (optimised, checkpointed, exported), in [0, 1] after training (the clamp ran);
    - its mask is 1 within each head's span, 0 from span + ramp on (both directions), rows sum to 1;
    - evaluation with trimming gives the logits of the full masked attention, and where only the span
      mask is in the attention (no quantizer, float softmax) the trimmed (banded) path really ran;
    - ``attention_span/mean_span`` in the summary is the model's mean span.
    """
    method = ctx.methods.get("attention_span")
    assert method is not None and hasattr(method, "masks"), "no adaptive span method in the run"
    masks = _span_masks(ctx.model, method.group or "attention_span")
    params = {id(p) for p in ctx.model.parameters()}
    for name, _, mask in masks:
        p = mask.span_fraction
        assert id(p) in params, f"{name}: span_fraction is not a parameter of the model"
        assert tuple(p.shape) == (mask.num_heads, 1, 1), f"{name}: span_fraction has shape {tuple(p.shape)}"
        assert bool(((p >= 0) & (p <= 1)).all()), f"{name}: span fractions left [0, 1] ({p.min():.3g}..{p.max():.3g})"
        _check_mask(name, mask)
    banded = _trimmed_equals_full(ctx, masks)
    alone = all(len(h.probs) == 1 and not (h.query or h.key or h.value or h.scores or h.score_observers)
                and type(h.softmax) is Softmax for _, h, _ in masks)
    window = max(m.window() for _, _, m in masks)
    if alone and method.trim_at_inference and band_block(window, _probe_length(ctx.model)) is not None:
        assert banded, "trimming is on and the span is short, yet evaluation never took the banded path"
    reported = ctx.metrics.get("attention_span/mean_span")
    assert reported is None or abs(reported - method.mean_span()) < 1e-6, \
        f"summary attention_span/mean_span = {reported}, the model's spans average {method.mean_span():.4f}"
    return True
