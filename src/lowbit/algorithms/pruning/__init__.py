"""Unstructured pruning: magnitude (Zhu & Gupta 2017), movement and soft movement (Sanh et al. 2020), with
EdgeBERT's separate embedding pruning."""

from lowbit.algorithms.pruning.effect import (
    check_layers_sparsity,
    movement_sparsity_reached,
    soft_movement_in_effect,
    sparsity_reached,
)
from lowbit.algorithms.pruning.functional import (
    cubic_sparsity,
    keep_largest,
    magnitude_masks,
    sigmoid_l1,
    straight_through,
    threshold_keep,
    topk_masks,
)
from lowbit.algorithms.pruning.magnitude import GradualPruningCallback, MagnitudePruning
from lowbit.algorithms.pruning.mask import ScoredMask, WeightMask
from lowbit.algorithms.pruning.movement import MovementPruning, ScorePruningCallback, SoftMovementPruning

__all__ = ["GradualPruningCallback", "MagnitudePruning", "MovementPruning", "ScorePruningCallback", "ScoredMask",
           "SoftMovementPruning", "WeightMask", "check_layers_sparsity", "cubic_sparsity", "keep_largest",
           "magnitude_masks", "movement_sparsity_reached", "sigmoid_l1", "soft_movement_in_effect", "sparsity_reached",
           "straight_through", "threshold_keep", "topk_masks"]
