"""Unstructured magnitude pruning (Zhu & Gupta 2017; Sanh et al. 2020 schedule; EdgeBERT embeddings)."""

from lowbit.algorithms.pruning.effect import check_layers_sparsity, sparsity_reached
from lowbit.algorithms.pruning.functional import cubic_sparsity, keep_largest, magnitude_masks
from lowbit.algorithms.pruning.magnitude import GradualPruningCallback, MagnitudePruning
from lowbit.algorithms.pruning.mask import WeightMask

__all__ = ["GradualPruningCallback", "MagnitudePruning", "WeightMask", "check_layers_sparsity", "cubic_sparsity",
           "keep_largest", "magnitude_masks", "sparsity_reached"]
