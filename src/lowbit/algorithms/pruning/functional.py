"""Pruning masks, the cubic sparsity schedule and movement pruning's pieces, as pure functions.

- ``topk_masks`` / ``magnitude_masks``: keep the largest scores (|w| for magnitude pruning), per
  matrix or over the union of matrices;
- ``cubic_sparsity``: Zhu & Gupta's (2017) gradual schedule with Sanh et al.'s (2020) initial and
  final warmups;
- ``straight_through``, ``threshold_keep``, ``sigmoid_l1``, ``init_scores``: Sanh et al.'s (2020)
  movement pruning (``TopKBinarizer`` / ``ThresholdBinarizer`` gradients, the soft-movement L1
  penalty, the score initializations of their ``MaskedLinear``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from lowbit.errors import check

SCOPES = ("per_matrix", "global")
#: score initializations of Sanh et al.'s ``MaskedLinear.init_mask`` (``mask_init``)
SCORE_INITS = ("constant", "uniform", "kaiming")
#: ``ThresholdBinarizer`` keeps at least int(0.005·n) + 1 weights of every matrix (half a percent)
MIN_KEEP_FRACTION = 0.005


def keep_largest(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask (shape of ``scores``) of the ``n_keep`` largest scores.

    Ties at the threshold are broken by flat index (the lowest indices survive), so the result does
    not depend on the device or sort implementation. O(n): one ``kthvalue``, no full sort.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if n_keep >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if n_keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = flat.kthvalue(n - n_keep + 1).values  # the n_keep-th largest
    keep = flat > threshold
    ties = (flat == threshold).nonzero().reshape(-1)  # ascending flat index
    keep[ties[: n_keep - int(keep.sum())]] = True
    return keep.reshape(scores.shape)


def n_pruned(sparsity: float, numel: int) -> int:
    """How many of ``numel`` weights a sparsity prunes: round(sparsity·numel) (Python's ``round``)."""
    return round(sparsity * numel)


def topk_masks(scores: Mapping[str, torch.Tensor], sparsity: float,
               scope: str = "per_matrix") -> dict[str, torch.Tensor]:
    """Keep-masks (True = survives) that prune the lowest scores.

    ``per_matrix``: exactly round(sparsity·n) entries of every matrix are pruned. ``global``:
    round(sparsity·N) over the union of all matrices (N entries together), so matrices with low
    scores lose more. Ties are broken by position (matrices in the order given, then flat index):
    the earlier entry survives.
    """
    check(0.0 <= sparsity <= 1.0, f"sparsity must be in [0, 1], got {sparsity!r}")
    check(scope in SCOPES, f"pruning scope must be one of {SCOPES}, got {scope!r}")
    if scope == "per_matrix" or not scores:
        return {name: keep_largest(s.detach(), s.numel() - n_pruned(sparsity, s.numel()))
                for name, s in scores.items()}
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores.values()])
    keep = keep_largest(flat, flat.numel() - n_pruned(sparsity, flat.numel()))
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return masks


def magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float,
                    scope: str = "per_matrix") -> dict[str, torch.Tensor]:
    """Keep-masks (True = survives) that prune the smallest |w|: ``topk_masks`` of |w|."""
    return topk_masks({name: w.detach().abs() for name, w in weights.items()}, sparsity, scope)


def check_warmups(initial_warmup: float, final_warmup: float, prefix: str = "") -> None:
    check(0.0 <= initial_warmup < 1.0, f"{prefix}initial_warmup must be in [0, 1), got {initial_warmup!r}")
    check(0.0 <= final_warmup < 1.0, f"{prefix}final_warmup must be in [0, 1), got {final_warmup!r}")
    check(initial_warmup + final_warmup < 1.0,
          f"{prefix}initial_warmup + {prefix}final_warmup must be < 1, got {initial_warmup} + {final_warmup}")


def cubic_sparsity(step: int, total_steps: int, initial_sparsity: float, final_sparsity: float,
                   initial_warmup: float = 0.0, final_warmup: float = 0.0) -> float:
    """Sparsity at training step ``step`` (0-based) of ``total_steps``: Zhu & Gupta's cubic schedule.

    ``initial_sparsity`` for steps ≤ i0 = initial_warmup·T, then
    s_f + (s_i − s_f)·(1 − (step − i0)/(E − i0))³ until E, and ``final_sparsity`` from step E on,
    where E = min(T·(1 − final_warmup), T − 1): the last ``final_warmup`` fraction of the steps is
    at the final sparsity, and the last step (T − 1) always is, even with ``final_warmup=0`` or a
    4-step run.

    Relation to Sanh et al.'s ``schedule_threshold`` (huggingface transformers,
    examples/research_projects/movement-pruning/masked_run_glue.py): there the warmups are multiples
    of the LR warmup steps W and the schedule is the fraction *kept* (threshold = 1 − sparsity).
    Sanh's ``initial_warmup=a, final_warmup=b`` with W warmup steps of T are
    ``initial_warmup=a·W/T, final_warmup=b·W/T`` here (with ``optim.warmup_ratio=r``: a·r and b·r).
    The two agree at every step whenever final_warmup·T ≥ 1; Sanh's ramp ends at step T (never
    reached) when ``final_warmup=0``, this one at the last step, T − 1.
    """
    check(total_steps >= 1, f"total_steps must be >= 1, got {total_steps!r}")
    check_warmups(initial_warmup, final_warmup)
    start = initial_warmup * total_steps
    end = min(total_steps * (1.0 - final_warmup), total_steps - 1.0)
    if step >= end:  # first: a run too short for any ramp still ends at the final sparsity
        return float(final_sparsity)
    if step <= start:
        return float(initial_sparsity)
    remaining = 1.0 - (step - start) / (end - start)
    return float(final_sparsity + (initial_sparsity - final_sparsity) * remaining ** 3)


# -- movement pruning (Sanh et al. 2020) -----------------------------------------------------------
class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return keep.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def straight_through(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``keep`` as 0./1. in ``scores``' dtype; the gradient goes to ``scores`` unchanged.

    The backward of Sanh et al.'s ``TopKBinarizer`` and ``ThresholdBinarizer``: with ``w * mask``,
    the scores receive w·∂L/∂(w·mask), so an SGD step moves them by −lr·w·∂L/∂w′ (movement). The
    forward is exact (no ``s − s.detach()`` rounding).
    """
    return _StraightThrough.apply(scores, keep)


def threshold_keep(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Soft movement's mask: σ(S) > τ, but never fewer than int(0.005·n) + 1 survivors (the largest scores).

    Sanh et al.'s ``ThresholdBinarizer(sigmoid=True)`` (half a percent of every matrix always survives).
    """
    n = scores.numel()
    n_min = int(MIN_KEEP_FRACTION * n) + 1
    keep = torch.sigmoid(scores.detach()) > threshold
    if int(keep.sum()) < n_min:
        return keep_largest(scores.detach(), n_min)
    return keep


def sigmoid_l1(scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Soft movement's penalty: the mean over score tensors of ‖σ(S)‖₁ / numel (Sanh et al.'s ``regularization``, l1)."""
    check(len(scores) > 0, "sigmoid_l1 needs at least one score tensor")
    return sum(torch.sigmoid(s).sum() / s.numel() for s in scores) / len(scores)


@torch.no_grad()
def init_scores(scores: torch.Tensor, init: str, scale: float) -> torch.Tensor:
    """Fill ``scores`` in place as Sanh et al.'s ``MaskedLinear.init_mask`` (``mask_init``, ``mask_scale``)."""
    check(init in SCORE_INITS, f"score init must be one of {SCORE_INITS}, got {init!r}")
    if init == "constant":
        return torch.nn.init.constant_(scores, scale)
    if init == "uniform":
        return torch.nn.init.uniform_(scores, -scale, scale)
    return torch.nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
