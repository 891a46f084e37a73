"""Entropy early exit from cached off-ramp logits: exit layers, whole threshold curves, operating points.

Everything here works on one tensor kept from one evaluation pass: ``logits[n, L, C]``, the logits of
the off-ramps after layers 1..L−1 and of the model's own head after layer L. No model runs again, so a
curve of K thresholds costs a few tensor ops (``python -m lowbit.bench early_exit`` measures it).

Exit rule (DeeBERT, ``highway_entropy < early_exit_entropy``): a sample leaves at the first off-ramp
whose prediction entropy is *strictly* below the threshold S; a sample no off-ramp lets go runs every
layer and takes the final head's prediction. S = 0 never exits early.

Expected saving (DeeBERT, Section 4.2): 1 − Σ_i i·N_i / (n·Σ_i N_i), with N_i the samples leaving after
layer i (1-based) of n. The official script's "expected saving" prints Σ i·N_i / (n·Σ N_i) — the
fraction of layers *used* — under that name; here ``saving`` is the paper's quantity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import check


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last dim, computed stably.

    DeeBERT's ``entropy(x) = log(Σ e^x) − Σ x·e^x / Σ e^x`` overflows to NaN once a logit passes ~88
    (float32); with the row max m subtracted first, a = Σ e^(x−m) ∈ [1, C] and
    H = log a − Σ (x−m)·e^(x−m) / a is the same number, finite for any finite logits.
    """
    x = logits.float()
    shifted = x - x.max(dim=-1, keepdim=True).values
    weights = shifted.exp()
    total = weights.sum(-1)
    return (total.log() - (shifted * weights).sum(-1) / total).clamp_min(0.0)


def exit_layers(entropies: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """0-based exit layer of every sample at every threshold: ``[n, L−1]`` off-ramp entropies, ``[K]``
    thresholds -> ``[n, K]`` in 0..L−1 (L−1 = the final head).

    The first off-ramp with entropy < S is the first layer whose running minimum of the entropies is < S;
    the running minimum never increases with depth, so the exit layer is the number of layers whose
    running minimum is ≥ S (vectorised over samples and thresholds, no loop).
    """
    running_min = entropies.cummin(dim=1).values  # [n, L-1]
    return (running_min.unsqueeze(-1) >= thresholds.reshape(1, 1, -1)).sum(dim=1)


def _binary_counts(preds: torch.Tensor, labels: torch.Tensor):
    y = labels.reshape(-1, 1)
    tp = ((preds == 1) & (y == 1)).sum(0).double()
    tn = ((preds == 0) & (y == 0)).sum(0).double()
    fp = ((preds == 1) & (y == 0)).sum(0).double()
    fn = ((preds == 0) & (y == 1)).sum(0).double()
    return tp, tn, fp, fn


def _acc(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (preds == labels.reshape(-1, 1)).double().mean(0)


def _f1(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    tp, _, fp, fn = _binary_counts(preds, labels)
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.zeros_like(tp))


def _mcc(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    tp, tn, fp, fn = _binary_counts(preds, labels)
    denominator = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)).sqrt()
    return torch.where(denominator > 0, (tp * tn - fp * fn) / denominator.clamp_min(1e-300), torch.zeros_like(tp))


#: GLUE metric name -> f(preds [n, K], labels [n]) -> [K], one value per column (same definitions as
#: ``lowbit.data.metrics``: accuracy, binary F1 of class 1, binary Matthews correlation)
COLUMN_METRICS = {"acc": _acc, "f1": _f1, "mcc": _mcc}


def column_metric(name: str, preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    check(name in COLUMN_METRICS, f"early exit: no threshold-curve metric {name!r}; known: {sorted(COLUMN_METRICS)}")
    return COLUMN_METRICS[name](preds, labels)


@dataclass
class ExitCurve:
    """Score, expected saving and per-layer exit counts at each threshold (tensors on the CPU)."""

    thresholds: torch.Tensor  # [K]
    score: torch.Tensor  # [K], the task's main metric (fraction, as logged: acc 0.91)
    saving: torch.Tensor  # [K], DeeBERT's expected saving
    exit_counts: torch.Tensor  # [K, L], samples leaving after each layer
    metric: str

    def rows(self) -> list[dict]:
        return [{"threshold": float(t), self.metric: float(s), "expected_saving": float(v),
                 **{f"exits_layer_{i + 1}": int(c) for i, c in enumerate(counts)}}
                for t, s, v, counts in zip(self.thresholds, self.score, self.saving, self.exit_counts)]


def exit_predictions(logits: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions [n, K], exit layers [n, K]) at each threshold, from ``logits[n, L, C]``."""
    layers = exit_layers(entropy(logits[:, :-1]), thresholds)
    per_layer_preds = logits.argmax(-1)  # [n, L]
    return per_layer_preds.gather(1, layers), layers


def threshold_curve(logits: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor, metric: str = "acc",
                    chunk: int = 1024) -> ExitCurve:
    """The whole curve over ``thresholds`` from cached ``logits[n, L, C]`` (in chunks of thresholds, so a
    curve over every distinct entropy of a large dev set stays within memory)."""
    check(logits.dim() == 3 and logits.shape[1] >= 2, f"early exit: logits must be [n, layers>=2, classes], got "
                                                      f"{tuple(logits.shape)}")
    logits, labels, thresholds = logits.float().cpu(), labels.cpu(), thresholds.double().cpu().reshape(-1)
    n_layers = logits.shape[1]
    entropies = entropy(logits[:, :-1]).double()
    per_layer_preds = logits.argmax(-1)
    scores, savings, counts = [], [], []
    for start in range(0, thresholds.numel(), chunk):
        ts = thresholds[start:start + chunk]
        layers = exit_layers(entropies, ts)  # [n, k]
        preds = per_layer_preds.gather(1, layers)
        scores.append(column_metric(metric, preds, labels))
        c = torch.nn.functional.one_hot(layers, n_layers).sum(0)  # [k, L]
        counts.append(c)
        used = (c.double() * torch.arange(1, n_layers + 1, dtype=torch.float64)).sum(1)
        savings.append(1.0 - used / (n_layers * c.sum(1).double()))
    return ExitCurve(thresholds, torch.cat(scores), torch.cat(savings), torch.cat(counts), metric)


def candidate_thresholds(logits: torch.Tensor) -> torch.Tensor:
    """Every threshold at which some sample's exit layer changes, placed half-way between consecutive
    distinct running-minimum entropies (plus 0, and 1e-3 above the largest: every sample exits), so the curve over them is the
    exact curve and no threshold sits on a sample's entropy: a rerun whose float entropies differ in the
    last bits (another batch size, another kernel) exits every sample at the same layer."""
    values = torch.unique(entropy(logits[:, :-1].float()).double().cummin(dim=1).values)
    mids = (values[1:] + values[:-1]) / 2 if values.numel() > 1 else values[:0]
    top = values[-1:] + 1e-3 if values.numel() else torch.ones(1, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), mids, top]).unique()


@dataclass
class OperatingPoint:
    tolerance: float  # allowed loss of the main metric, in points (0.01 of a fraction = 1 point)
    threshold: float
    score: float
    saving: float


def operating_points(curve: ExitCurve, tolerances: tuple[float, ...]) -> list[OperatingPoint]:
    """For each tolerance t (points): the threshold with the largest expected saving whose score is at
    least the no-exit score (S = the smallest threshold of the curve, normally 0) minus t points; ties
    go to the smaller threshold."""
    base = float(curve.score[torch.argmin(curve.thresholds)])
    points = []
    for t in tolerances:
        ok = curve.score >= base - t / 100.0 - 1e-12
        saving = torch.where(ok, curve.saving, torch.full_like(curve.saving, -1.0))
        best = float(saving.max())
        idx = int(torch.nonzero(saving == best)[:, 0][torch.argmin(curve.thresholds[saving == best])])
        points.append(OperatingPoint(t, float(curve.thresholds[idx]), float(curve.score[idx]), float(curve.saving[idx])))
    return points
