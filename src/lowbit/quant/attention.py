"""Hooks inside self-attention, through transformers' attention-function registry.

lowbit registers one attention implementation, ``"lowbit"``. A self-attention
module that carries an ``AttentionHooks`` child (attribute ``lowbit_attention``)
gets its Q/K/V and probabilities passed through the hooks' quantizers, and its
pre-softmax scores offered to observers (distillation) and score/prob transforms
(attention span, integer softmax). Modules without hooks run plain eager
attention. No model code is forked, and any number of methods can share one
``AttentionHooks`` per layer.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTN_IMPLEMENTATION = "lowbit"
HOOKS_ATTR = "lowbit_attention"


class AttentionHooks(nn.Module):
    def __init__(self):
        super().__init__()
        self.query_quantizer: nn.Module = nn.Identity()
        self.key_quantizer: nn.Module = nn.Identity()
        self.value_quantizer: nn.Module = nn.Identity()
        self.probs_quantizer: nn.Module = nn.Identity()
        #: softmax over the last dim; integer-softmax approximations replace it
        self.softmax: Callable[[torch.Tensor], torch.Tensor] = lambda s: torch.softmax(s, dim=-1, dtype=torch.float32)
        #: callables f(scores, attention_mask) -> None, e.g. distillation capture
        self.score_observers: list[Callable[[torch.Tensor, torch.Tensor | None], None]] = []
        #: callables f(probs) -> probs applied after softmax (e.g. adaptive span mask)
        self.probs_transforms: list[Callable[[torch.Tensor], torch.Tensor]] = []


def lowbit_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs):
    hooks: AttentionHooks | None = getattr(module, HOOKS_ATTR, None)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if hooks is not None:
        query, key, value = hooks.query_quantizer(query), hooks.key_quantizer(key), hooks.value_quantizer(value)
    # scaling folded into Q: same scores, a 4x smaller multiply than scaling the [L, L] scores
    scores = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        scores = scores + attention_mask
    if hooks is None:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    else:
        for observe in hooks.score_observers:
            observe(scores, attention_mask)
        probs = hooks.softmax(scores).to(query.dtype)
        for transform in hooks.probs_transforms:
            probs = transform(probs)
        probs = hooks.probs_quantizer(probs)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


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
