"""Effects of the pruning options: the trained model is as sparse as configured (or, soft movement, sparse at all),
measured from the model."""

from __future__ import annotations

import math
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


def _scored_masks(model: nn.Module) -> dict[str, nn.Module]:
    """The movement-pruning masks (``ScoredMask``: a mask with ``scores``) of the encoder Linears, by module name."""
    found = {}
    for t in find_targets(model, *ENCODER_LINEAR_ROLES):
        mask = t.module.transform_of_kind("mask") if hasattr(t.module, "transform_of_kind") else None
        assert mask is not None and hasattr(mask, "scores"), f"{t.name}: no movement-pruning mask in its weight chain"
        found[t.name] = mask
    assert found, "no encoder Linear layers in the model"
    return found


def _check_baked(model: nn.Module) -> None:
    unbaked = [name for name, mask in _scored_masks(model).items() if mask.scores.numel() != 0]
    assert not unbaked, f"movement-pruning masks not baked at the end of training (scores kept): {unbaked[:3]}"


def movement_sparsity_reached(ctx: EffectContext) -> bool:
    """``pruning=movement``: the masks are baked (no scores left) and as sparse as configured (``sparsity_reached``)."""
    _check_baked(ctx.model)
    return sparsity_reached(ctx)


@torch.no_grad()
def soft_movement_in_effect(ctx: EffectContext) -> bool:
    """``pruning=soft_movement``: masks baked and binary, the penalty produced some sparsity, the penalty was logged.

    Binary: every effective weight is the weight's own value or 0 (without a quantizer, exactly
    ``w * mask``; with one, every pruned position is 0). The sparsity is whatever the penalty
    produced: it must be above 0 and equal the summary's ``pruning/sparsity``.
    """
    _check_baked(ctx.model)
    numel = pruned = 0
    for name, mask in _scored_masks(ctx.model).items():
        layer = ctx.model.get_submodule(name)
        keep = mask.mask
        weight = layer.effective_weight()
        assert keep.dtype == torch.bool, f"{name}: the mask is not binary ({keep.dtype})"
        if layer.quantizer is None:
            assert torch.equal(weight, layer.weight * keep), f"{name}: the effective weight is not w * binary mask"
        else:
            assert not weight[~keep].ne(0).any(), f"{name}: pruned weights are not zero in the effective weight"
        numel += keep.numel()
        pruned += int((~keep).sum())
    sparsity = pruned / numel
    assert sparsity > 0, "soft movement pruned nothing: the penalty produced no sparsity"
    reported = ctx.metrics.get("pruning/sparsity")
    assert reported is not None and abs(reported - sparsity) < 1e-9, \
        f"summary pruning/sparsity = {reported}, the model's masks are {sparsity:.4f} sparse"
    penalty = ctx.metrics.get("train/loss_scores_l1")
    assert penalty is not None and math.isfinite(penalty) and penalty > 0, \
        f"the soft-movement penalty train/loss_scores_l1 was not logged (got {penalty!r})"
    return True
