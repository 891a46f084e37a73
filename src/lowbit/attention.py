"""Slots inside self-attention, through transformers' attention-function registry.

lowbit registers one attention implementation, ``"lowbit"``. A self-attention module that
carries an ``AttentionHooks`` child (attribute ``lowbit_attention``) runs its Q, K, V, scores
and probabilities through the hooks' slots; modules without hooks run plain eager attention.
No model code is forked. Every slot is a registered ``nn.ModuleDict`` keyed by the method
group that filled it, so parameters placed there (adaptive span) are optimised, checkpointed
and moved with the model, and any number of methods share one ``AttentionHooks`` per layer:

- ``query``, ``key``, ``value``: tensor -> tensor (8-bit quantizers);
- ``score_observers``: f(scores, attention_mask) -> None, see the pre-softmax scores (distillation);
- ``scores``: f(scores, attention_mask) -> scores, before the softmax;
- ``softmax``: the softmax itself (a module: the ``softmax`` role; integer softmax replaces it);
- ``probs``: probs -> probs, after the softmax, ordered by ``chain_order`` (a span mask before the
  8-bit quantizer).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from lowbit.codes import attach, lookup, recording

ATTN_IMPLEMENTATION = "lowbit"
HOOKS_ATTR = "lowbit_attention"
ATTENTION_SLOTS = ("query", "key", "value", "score_observers", "scores", "probs")


class Softmax(nn.Module):
    """Softmax over the last dim in float32 (what eager attention does)."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, dim=-1, dtype=torch.float32)


class AttentionHooks(nn.Module):
    def __init__(self):
        super().__init__()
        for slot in ATTENTION_SLOTS:
            setattr(self, slot, nn.ModuleDict())
        self.softmax: nn.Module = Softmax()

    def add(self, slot: str, name: str, module: nn.Module) -> None:
        from lowbit.errors import LowbitConfigError

        if slot not in ATTENTION_SLOTS:
            raise LowbitConfigError(f"unknown attention slot {slot!r}; known: {ATTENTION_SLOTS}")
        chain: nn.ModuleDict = getattr(self, slot)
        if name in chain:
            raise LowbitConfigError(f"attention slot {slot!r} already has a transform named {name!r}")
        items = sorted([*chain.items(), (name, module)], key=lambda kv: getattr(kv[1], "chain_order", 50))
        setattr(self, slot, nn.ModuleDict(items))


def _chain(slot: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    for t in slot.values():
        x = t(x)
    return x


def lowbit_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs):
    hooks: AttentionHooks | None = getattr(module, HOOKS_ATTR, None)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if hooks is not None:
        query, key, value = _chain(hooks.query, query), _chain(hooks.key, key), _chain(hooks.value, value)
    # scaling folded into Q: same scores, a 4x smaller multiply than scaling the [L, L] scores
    scores = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        scores = scores + attention_mask
    if hooks is not None and recording():
        # Q, K carry integer codes (8-bit static quantizers, evaluation): the scores' integer accumulator,
        # masked keys at -inf, is recorded for the softmax's requantization (lowbit.codes)
        product = _codes_product(query, key.transpose(2, 3), scaling)
        if product is not None:
            codes, scale = product
            masked = scores < torch.finfo(scores.dtype).min / 2
            attach(scores, codes.masked_fill(masked, float("-inf")), scale)
    if hooks is None:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    else:
        for observe in hooks.score_observers.values():
            observe(scores, attention_mask)
        for transform in hooks.scores.values():
            scores = transform(scores, attention_mask)
        probs = _chain(hooks.probs, hooks.softmax(scores).to(query.dtype))
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    if hooks is not None and recording():
        product = _codes_product(probs, value)
        if product is not None:
            attach(out, product[0].transpose(1, 2), product[1])
    return out, probs


def _codes_product(a: torch.Tensor, b: torch.Tensor, factor: float = 1.0):
    """``(codes, scale)`` of ``a @ b`` from the integer codes both carry (per-tensor scales), or None."""
    ra, rb = lookup(a), lookup(b)
    if ra is None or rb is None or ra.scale.numel() != 1 or rb.scale.numel() != 1:
        return None
    return torch.matmul(ra.codes, rb.codes), ra.scale.reshape(()) * rb.scale.reshape(()) * factor


AttentionInterface.register(ATTN_IMPLEMENTATION, lowbit_attention_forward)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)  # additive float mask, as eager


def attention_hooks(module: nn.Module) -> AttentionHooks:
    """The hooks of one self-attention module, created on first use."""
    hooks = getattr(module, HOOKS_ATTR, None)
    if hooks is None:
        hooks = AttentionHooks()
        module.add_module(HOOKS_ATTR, hooks)
    return hooks


def enable_lowbit_attention(model: nn.Module) -> None:
    """Route every attention call of a HF model through ``lowbit_attention_forward``."""
    if getattr(model.config, "_attn_implementation", None) != ATTN_IMPLEMENTATION:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
