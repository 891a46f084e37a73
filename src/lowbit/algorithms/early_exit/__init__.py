"""Entropy early exit (DeeBERT / EdgeBERT): off-ramps, one-pass threshold curves, a batch exit runner."""

from lowbit.algorithms.early_exit.curve import (
    ExitCurve,
    candidate_thresholds,
    entropy,
    exit_layers,
    operating_points,
    threshold_curve,
)
from lowbit.algorithms.early_exit.method import EntropyEarlyExit, load_exit_cache
from lowbit.algorithms.early_exit.offramp import ExitPolicy, OffRamp

__all__ = ["EntropyEarlyExit", "ExitCurve", "ExitPolicy", "OffRamp", "candidate_thresholds", "entropy", "exit_layers",
           "load_exit_cache", "operating_points", "threshold_curve"]
