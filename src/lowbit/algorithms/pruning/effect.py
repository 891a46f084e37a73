"""The effect of ``pruning=magnitude``: the trained model is as sparse as configured, measured from the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lowbit.algorithms.effects import EffectContext
from lowbit.roles import ENCODER_LINEAR_ROLES, find_targets

TOLERANCE = 0.01


@torch.no_grad()
def check_layers_sparsity(model: nn.Module, roles: Sequence[str], target: float, what: str,
                          tolerance: float = TOLERANCE) -> float:
    """Assert the layers with ``roles`` are pruned to ``target`` (±tolerance); returns the mask sparsity.

    Measured twice: zeros among the mask entries, and zeros among the effective weights (the
    chain's output). Every pruned position must be zero in the effective weight. A quantizer
    after the mask rounds some survivors to zero too (ternary: about a third), so when one is in
    the chain the effective weights must be at least ``target`` sparse; without one, within
    ±tolerance of it.
    """
    targets = find_targets(model, *roles)
    assert targets, f"no {what} layers (roles {tuple(roles)}) in the model"
    numel = pruned = zeros = 0
    quantized = False
    for t in targets:
        layer = t.module
        mask = getattr(layer, "weight_mask", None)
        assert mask is not None, f"{t.name}: no pruning mask in its weight chain"
        weight = layer.effective_weight()
        leaked = int(weight[~mask].ne(0).sum())
        assert leaked == 0, f"{t.name}: {leaked} pruned weights are not zero in the effective weight"
        numel += mask.numel()
        pruned += int((~mask).sum())
        zeros += int(weight.eq(0).sum())
        quantized |= layer.quantizer is not None
    mask_sparsity, weight_sparsity = pruned / numel, zeros / numel
    assert abs(mask_sparsity - target) <= tolerance, \
        f"{what} masks are {mask_sparsity:.4f} sparse, configured {target}"
    if quantized:
        assert weight_sparsity >= target - tolerance, \
            f"{what} effective weights are {weight_sparsity:.4f} sparse, configured {target}"
    else:
        assert abs(weight_sparsity - target) <= tolerance, \
            f"{what} effective weights are {weight_sparsity:.4f} sparse, configured {target}"
    return mask_sparsity


def sparsity_reached(ctx: EffectContext) -> bool:
    """Encoder Linear weights (and embeddings, when configured) are pruned to the final sparsity.

    An option that prunes nothing fails: the configured final sparsity must be above 0, and the
    model's masks and effective weights must reach it. The run summary, when it has
    ``pruning/sparsity``, must agree with what the model shows.
    """
    method = ctx.methods.get("pruning")
    assert method is not None and hasattr(method, "final_sparsity"), "no magnitude pruning method in the run"
    assert method.final_sparsity > 0, "pruning.final_sparsity=0 prunes nothing"
    encoder = check_layers_sparsity(ctx.model, ENCODER_LINEAR_ROLES, method.final_sparsity, "encoder Linear")
    reported = ctx.metrics.get("pruning/sparsity")
    assert reported is None or abs(reported - encoder) < 1e-9, \
        f"summary pruning/sparsity = {reported}, the model's masks are {encoder:.4f} sparse"
    if method.embedding_sparsity is not None:
        embedding = check_layers_sparsity(ctx.model, method.embedding_roles, method.embedding_sparsity, "embedding")
        reported = ctx.metrics.get("pruning/embedding_sparsity")
        assert reported is None or abs(reported - embedding) < 1e-9, \
            f"summary pruning/embedding_sparsity = {reported}, the model's masks are {embedding:.4f} sparse"
    return True
