"""GLUE metrics on whole eval sets (computed once per epoch, not averaged over batches)."""

from __future__ import annotations

import torch
from torchmetrics.functional import (accuracy, f1_score, matthews_corrcoef, pearson_corrcoef,
                                     spearman_corrcoef)

from lowbit.registry import Registry

METRICS = Registry("metric")
METRICS.register("acc", lambda p, y: accuracy(p, y, task="multiclass", num_classes=int(max(p.max(), y.max()) + 1)))
METRICS.register("f1", lambda p, y: f1_score(p, y, task="binary"))
METRICS.register("mcc", lambda p, y: matthews_corrcoef(p, y, task="binary"))
METRICS.register("pearson", lambda p, y: pearson_corrcoef(p.float(), y.float()))
METRICS.register("spearman", lambda p, y: spearman_corrcoef(p.float(), y.float()))


def predictions(logits: torch.Tensor, regression: bool) -> torch.Tensor:
    return logits.squeeze(-1) if regression else logits.argmax(-1)


def compute_metrics(names: tuple[str, ...], preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {name: float(METRICS.get(name)(preds, labels)) for name in names}
