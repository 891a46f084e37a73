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
  8-bit quantizer). A first transform that renormalises rows by weights m and says so with
  ``log_weights(distance)`` is folded into the float softmax as softmax(s + log m) (finite gradients
  where the softmax left almost no weight inside the mask).

Banded attention (evaluation). A ``probs`` transform that confines every query's weight to keys at
distance |i − j| <= W and renormalises each row itself (the adaptive span mask) says so with
``attention_window() -> W | None``, and takes ``forward(probs, distance)`` for any layout of query
and key positions. When it is the only ``probs`` transform and nothing else needs the full [L, L]
scores, evaluation computes Q·Kᵀ only in blocks of queries against their key window
[block start − W, block end + W): L·(block + 2W) products instead of L² (where that is at most half
of them, ``band_block``). The softmax then normalises over the window instead of the whole row,
which the transform's own renormalisation cancels, so the result equals the full path to float
rounding (``tests/attention_span``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        band = _band(module, hooks, query, key, value, kwargs)
        if band is not None:
            return banded_attention(query, key, value, attention_mask, scaling, *band), None
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
        probs = _softmax_and_probs(hooks, scores, query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    if hooks is not None and recording():
        product = _codes_product(probs, value)
        if product is not None:
            attach(out, product[0].transpose(1, 2), product[1])
    return out, probs


def _softmax_and_probs(hooks: AttentionHooks, scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The softmax, then the ``probs`` chain.

    A first ``probs`` transform that renormalises each row by weights m (``log_weights(distance)``: the
    adaptive span) is folded into a float softmax as softmax(s + log m): the same distribution, with
    finite gradients however little weight the softmax left inside the mask (see ``AdaptiveSpanMask``).
    Keys the padding mask removes get exactly 0, as the transform's own ``forward`` gives them.
    """
    transforms = list(hooks.probs.values())
    fold = getattr(transforms[0], "log_weights", None) if transforms and type(hooks.softmax) is Softmax else None
    if fold is None:
        return _chain(hooks.probs, hooks.softmax(scores).to(dtype))
    q = torch.arange(scores.size(-2), device=scores.device)
    k = torch.arange(scores.size(-1), device=scores.device)
    probs = torch.softmax(scores + fold((q[:, None] - k[None, :]).abs()), dim=-1, dtype=torch.float32)
    probs = probs.masked_fill(scores <= torch.finfo(scores.dtype).min / 2, 0.0).to(dtype)
    for transform in transforms[1:]:
        probs = transform(probs)
    return probs


def _band(module: nn.Module, hooks: AttentionHooks, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          kwargs: dict) -> tuple[nn.Module, int, int] | None:
    """``(band transform, window W, block)`` when the banded path gives the full path's result and saves work.

    Only in evaluation (training keeps the one full path for dropout and gradients); only when the
    band transform is the sole ``probs`` transform, the softmax is the float one and no score
    observer or transform needs the full scores; never when Q, K or V carry integer codes (I-BERT
    evaluation: the integer products are recorded on the full path) or attention weights are asked for.
    """
    if module.training or len(hooks.probs) != 1 or hooks.scores or hooks.score_observers:
        return None
    if type(hooks.softmax) is not Softmax or kwargs.get("output_attentions"):
        return None
    (band,) = hooks.probs.values()
    window_of = getattr(band, "attention_window", None)
    length = key.size(2)
    if window_of is None or query.size(2) != length:
        return None
    window = window_of()
    block = None if window is None else band_block(window, length)
    if block is None:
        return None
    if any(lookup(t) is not None for t in (query, key, value)):
        return None
    return band, window, block


def band_block(window: int, length: int) -> int | None:
    """Query rows per block of the banded path for a key window W at length L, or None when it would not pay.

    16 rows for windows up to 16, else 32: multiples of 16 keep the batched products aligned, and small
    blocks waste fewer products on the band's corners (L·(block + 2W) in all). The band runs only where a
    block's keys (block + 2W) are at most half the sequence: below that the full path's one large product
    is faster on CPU than the band's extra elementwise work (``python -m lowbit.bench attention_span``).
    """
    block = 16 if window <= 16 else 32
    return block if block + 2 * window <= length // 2 else None


def banded_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float, band: nn.Module, window: int,
                     block: int) -> torch.Tensor:
    """Self-attention where query i sees only keys |i − j| <= ``window``, in blocks of ``block`` queries.

    Queries are cut into blocks; block n (rows nb … nb + b − 1) meets the keys nb − W … nb + b − 1 + W,
    taken as one strided view of K and V padded by W on both sides, so one batched matmul computes
    every block's [b, b + 2W] scores. In that layout query i = nb + r and key j = nb + c − W are
    |r − c + W| apart in every block, so ``band`` gets one [b, b + 2W] distance matrix. Keys the
    padding mask removes (and the pad beyond the sequence) get weight exactly 0, as the full softmax
    gives them. Returns the attention output ``[batch, length, heads, head_dim]``.
    """
    batch, heads, length, _ = query.shape
    n_blocks = -(-length // block)
    padded, width = n_blocks * block, block + 2 * window
    q = F.pad(query, (0, 0, 0, padded - length)).reshape(batch, heads, n_blocks, block, -1)
    k = F.pad(key, (0, 0, window, padded - length + window)).unfold(2, width, block)  # [B, H, n, D, width]
    v = F.pad(value, (0, 0, window, padded - length + window)).unfold(2, width, block).transpose(-1, -2)
    scores = torch.matmul(q * scaling, k)  # [B, H, n, b, width]
    lowest = torch.finfo(scores.dtype).min
    mask = (torch.zeros(1, 1, length, length, dtype=scores.dtype, device=scores.device) if attention_mask is None
            else attention_mask.to(scores.dtype).expand(-1, -1, length, length))
    mask = F.pad(mask, (window, padded - length + window), value=lowest)
    mask = F.pad(mask, (0, 0, 0, padded - length)).contiguous()  # [B', H', padded, padded + 2W]
    s_b, s_h, s_row, s_col = mask.stride()
    mask = mask.as_strided((mask.size(0), mask.size(1), n_blocks, block, width),
                           (s_b, s_h, block * (s_row + s_col), s_row, s_col))
    rows = torch.arange(block, device=query.device)
    cols = torch.arange(width, device=query.device)
    distance = (rows[:, None] - cols[None, :] + window).abs()
    fold = getattr(band, "log_weights", None)  # as the full path: the band folded into the softmax
    if fold is not None:
        mask = mask + fold(distance).unsqueeze(1)  # [H, 1 (blocks), b, width]
    probs = torch.softmax(scores + mask, dim=-1, dtype=torch.float32)
    probs = probs.to(query.dtype).masked_fill(mask <= lowest / 2, 0.0)  # a window of masked keys only: 0
    if fold is None:
        probs = band(probs, distance)
    out = torch.matmul(probs, v).reshape(batch, heads, padded, -1)[:, :, :length]
    return out.transpose(1, 2).contiguous()


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
