"""EdgeBERT's exit-layer predictor: from the first off-ramp's entropy, the layer a sentence will exit at.

EdgeBERT (harvard-acc/EdgeBERT: ``sw/Entropy_LUT/entropypredictor.ipynb`` builds the table,
``modeling_highway_albert.py`` with ``--entropy_predictor`` uses it) fits, on the training set, a regressor from
the entropy after layer 1 to the entropies of the later off-ramps, tabulates it at 100 first-layer entropies
(0, 0.01, ..., 0.99; a sentence takes the nearest row) and predicts the exit layer as the first later layer whose
*tabulated* entropy is below the threshold S. The table holds entropies, not layers, so one table serves every S.

Here (``kind="entropy"``, the default) the table is the same — per bin of the first entropy, one expected entropy
per off-ramp — but each cell is the mean of the training sentences in that bin (what the notebook's MSE-trained
MLP approximates, without its smoothing), ``bins`` equal-width bins on [0, ln C], and an empty bin takes its
nearest non-empty bin's row. ``kind="exit_layer"`` tabulates the exit layer itself: per bin, the (lower) median
exit layer at S of the training sentences that do not leave at layer 1 — it minimises the mean |miss| on the
training set, and must be refitted for another S.

Latency (``scheduled_latency_ms``): EdgeBERT runs layer 1 at full speed, predicts the exit layer, and lowers the
clock (DVFS) so that the predicted layers end exactly at the sentence's latency target. The clock itself is out of
scope here; what is kept is its timing consequence: after layer 1 every layer is stretched by
``(target − T₁) / (T(predicted) − T₁)`` (never below full speed). Two rules for a sentence whose entropy has not
fallen below S at the predicted layer:

- ``run_on``: it runs its remaining layers to its own exit — the schedule has spent the whole target by then, so it
  misses the target;
- ``stop`` (EdgeBERT's code: ``k == 0`` raises ``HighwayException`` at the predicted layer whatever the entropy):
  it leaves at the predicted layer with that off-ramp's answer — the target holds, the accuracy pays
  (``score_stop_at_prediction``).

A sentence whose entropy falls below S before the predicted layer leaves there (both rules, as EdgeBERT's code
without ``--no_ee_before``). Layers are 0-based here (0..L−1, L−1 = the final head), as in ``curve``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.algorithms.early_exit.curve import column_metric, entropy, exit_layers
from lowbit.errors import check

TABLE_KINDS = ("entropy", "exit_layer")
LATENCY_RULES = ("run_on", "stop")


def entropy_bins(first_entropy: torch.Tensor, bins: int, num_labels: int) -> torch.Tensor:
    """Bin of each first-layer entropy: ``bins`` equal-width bins on [0, ln C]; values at or above ln C (float
    rounding) fall in the last bin."""
    width = math.log(num_labels) / bins
    return (first_entropy.double() / width).floor().long().clamp(0, bins - 1)


def _nearest_filled(filled: torch.Tensor) -> torch.Tensor:
    """For every bin, the nearest bin with training sentences (ties: the lower-entropy one)."""
    nonempty = filled.nonzero()[:, 0]
    distance = (torch.arange(filled.numel()).unsqueeze(1) - nonempty.unsqueeze(0)).abs()
    return nonempty[distance.argmin(dim=1)]  # argmin returns the first minimum: the lower bin


@dataclass
class ExitPredictor:
    """A fitted lookup table. ``table``: ``[bins, L−1]`` mean off-ramp entropies (``entropy``) or ``[bins]``
    0-based exit layers at ``threshold`` (``exit_layer``); ``counts``: training sentences each bin was fitted on."""

    kind: str
    bins: int
    num_labels: int
    threshold: float
    n_layers: int
    table: torch.Tensor
    counts: torch.Tensor

    def predict(self, entropies: torch.Tensor) -> torch.Tensor:
        """0-based predicted exit layer of each sentence from its off-ramp entropies ``[n, L−1]`` (only the first
        column is read: a sentence below S at layer 1 leaves there, the others get the table's layer)."""
        first = entropies[:, 0].double()
        rows = entropy_bins(first, self.bins, self.num_labels)
        if self.kind == "entropy":
            expected = self.table[rows].clone()
            expected[:, 0] = first  # layer 1's entropy is measured, not predicted
            return exit_layers(expected, torch.tensor([self.threshold], dtype=torch.float64))[:, 0]
        return torch.where(first < self.threshold, torch.zeros_like(rows), self.table[rows])

    def rows(self) -> list[dict]:
        """The table, one row per bin, for logging: ``predicted_exit_layer`` (1-based) is the table's answer for a
        sentence of that bin that does not leave at layer 1."""
        width = math.log(self.num_labels) / self.bins
        if self.kind == "entropy":
            expected = self.table.clone()
            expected[:, 0] = math.inf  # not leaving at layer 1
            layers = exit_layers(expected, torch.tensor([self.threshold], dtype=torch.float64))[:, 0]
        else:
            layers = self.table
        out = []
        for b in range(self.bins):
            row = {"bin": b, "entropy_from": b * width, "entropy_to": (b + 1) * width,
                   "train_sentences": int(self.counts[b]), "predicted_exit_layer": int(layers[b]) + 1}
            if self.kind == "entropy":
                row.update({f"mean_entropy_layer_{j + 1}": float(v) for j, v in enumerate(self.table[b])})
            out.append(row)
        return out


def fit_predictor(train_entropies: torch.Tensor, num_labels: int, threshold: float, bins: int = 50,
                  kind: str = "entropy") -> ExitPredictor:
    """Fit the lookup table on training-set off-ramp entropies ``[n, L−1]`` (L = encoder layers)."""
    check(kind in TABLE_KINDS, f"early_exit.predictor.table must be one of {TABLE_KINDS}, got {kind!r}")
    check(train_entropies.dim() == 2 and train_entropies.shape[0] > 0 and train_entropies.shape[1] >= 1,
          f"early exit predictor: needs training entropies [n>0, layers-1>=1], got {tuple(train_entropies.shape)}")
    entropies = train_entropies.double()
    n_layers = entropies.shape[1] + 1
    rows = entropy_bins(entropies[:, 0], bins, num_labels)
    if kind == "entropy":
        counts = torch.bincount(rows, minlength=bins)
        sums = torch.zeros(bins, entropies.shape[1], dtype=torch.float64).index_add_(0, rows, entropies)
        table = sums / counts.clamp_min(1).unsqueeze(1).double()
        return ExitPredictor(kind, bins, num_labels, float(threshold), n_layers,
                             table[_nearest_filled(counts > 0)], counts)
    # exit_layer: only sentences that reach the table (first entropy >= S) say what it should answer
    actual = exit_layers(entropies, torch.tensor([float(threshold)], dtype=torch.float64))[:, 0]
    consulted = entropies[:, 0] >= threshold
    counts = torch.bincount(rows[consulted], minlength=bins)
    if not bool(consulted.any()):  # every training sentence leaves at layer 1: no evidence, run every layer
        return ExitPredictor(kind, bins, num_labels, float(threshold), n_layers,
                             torch.full((bins,), n_layers - 1, dtype=torch.long), counts)
    table = torch.zeros(bins, dtype=torch.long)
    for b in counts.nonzero()[:, 0].tolist():
        table[b] = actual[consulted & (rows == b)].median()  # the lower median of an even count
    return ExitPredictor(kind, bins, num_labels, float(threshold), n_layers, table[_nearest_filled(counts > 0)], counts)


@dataclass
class PredictionStats:
    """Predicted vs actual exit layers; miss = predicted − actual, in layers."""

    sentences: int
    consulted: float  # fraction whose first entropy is >= S (the table answered)
    exact: float
    exact_when_consulted: float | None
    mean_miss: float
    mean_abs_miss: float
    within_one: float
    miss_counts: dict[int, int]

    def as_dict(self) -> dict:
        return {"sentences": self.sentences, "consulted": self.consulted, "exact": self.exact,
                "exact_when_consulted": self.exact_when_consulted, "mean_miss": self.mean_miss,
                "mean_abs_miss": self.mean_abs_miss, "within_1": self.within_one,
                "miss_counts": {str(k): v for k, v in self.miss_counts.items()}}


def prediction_stats(predicted: torch.Tensor, actual: torch.Tensor, consulted: torch.Tensor) -> PredictionStats:
    check(predicted.shape == actual.shape == consulted.shape and predicted.numel() > 0,
          "early exit predictor: predicted, actual and consulted must be non-empty and of one shape")
    miss = (predicted.long() - actual.long())
    values, counts = torch.unique(miss, return_counts=True)
    hits = miss == 0
    return PredictionStats(
        sentences=int(miss.numel()), consulted=float(consulted.double().mean()), exact=float(hits.double().mean()),
        exact_when_consulted=float(hits[consulted].double().mean()) if bool(consulted.any()) else None,
        mean_miss=float(miss.double().mean()), mean_abs_miss=float(miss.abs().double().mean()),
        within_one=float((miss.abs() <= 1).double().mean()),
        miss_counts={int(v): int(c) for v, c in zip(values, counts)})


def scheduled_latency_ms(predicted: torch.Tensor, actual: torch.Tensor, cumulative_ms: torch.Tensor,
                         target_ms: float, rule: str = "run_on") -> torch.Tensor:
    """Each sentence's latency when its predicted layers are scheduled to end at ``target_ms`` (module docstring).

    ``cumulative_ms``: ``[L]`` (one profile) or ``[n, L]`` (per sentence): time from the sentence's start to the end
    of layer i's exit decision at full speed (i = L−1: the final head's output)."""
    check(rule in LATENCY_RULES, f"latency rule must be one of {LATENCY_RULES}, got {rule!r}")
    cumulative = cumulative_ms.double().expand(predicted.shape[0], -1) if cumulative_ms.dim() == 1 \
        else cumulative_ms.double()
    stop = actual if rule == "run_on" else torch.minimum(actual, predicted)
    first = cumulative[:, 0]
    planned = cumulative.gather(1, predicted.long().reshape(-1, 1))[:, 0] - first
    # the clock after layer 1 is slowed until the predicted layers fill the target, never run faster than full speed
    stretch = torch.where(planned > 0, ((target_ms - first) / planned.clamp_min(1e-300)).clamp_min(1.0),
                          torch.ones_like(planned))
    return first + stretch * (cumulative.gather(1, stop.long().reshape(-1, 1))[:, 0] - first)


def latency_target_fractions(predicted: torch.Tensor, actual: torch.Tensor, cumulative_ms: torch.Tensor,
                             full_model_ms: torch.Tensor | float, targets_ms: list[float]) -> dict[str, dict]:
    """Fraction of sentences within each target: ``all_layers`` (the plain model, every layer, full speed),
    ``early_exit`` (exit at the actual layer, full speed: no schedule, the ceiling), ``predicted`` (scheduled to the
    predicted layer, rule ``run_on``) and ``predicted_stop`` (EdgeBERT's code: rule ``stop``)."""
    n = predicted.shape[0]
    cumulative = cumulative_ms.double().expand(n, -1) if cumulative_ms.dim() == 1 else cumulative_ms.double()
    full = torch.as_tensor(full_model_ms, dtype=torch.float64).expand(n)
    at_exit = cumulative.gather(1, actual.long().reshape(-1, 1))[:, 0]
    out = {}
    for target in targets_ms:
        within = target * (1 + 1e-9)  # a schedule that fills the target exactly meets it despite float rounding
        out[f"{target:g}"] = {
            "all_layers": float((full <= within).double().mean()),
            "early_exit": float((at_exit <= within).double().mean()),
            "predicted": float((scheduled_latency_ms(predicted, actual, cumulative, target, "run_on") <= within)
                               .double().mean()),
            "predicted_stop": float((scheduled_latency_ms(predicted, actual, cumulative, target, "stop") <= within)
                                    .double().mean()),
        }
    return out


def predictor_report(predictor: ExitPredictor, logits: torch.Tensor, labels: torch.Tensor, metric: str) -> dict:
    """The predictor on a dev set's cached exit logits ``[n, L, C]``: miss statistics, and the score when every
    sentence leaves at min(actual, predicted) — EdgeBERT's forced exit at the predicted layer."""
    entropies = entropy(logits[:, :-1].float()).double()
    threshold = torch.tensor([predictor.threshold], dtype=torch.float64)
    actual = exit_layers(entropies, threshold)[:, 0]
    predicted = predictor.predict(entropies)
    stats = prediction_stats(predicted, actual, entropies[:, 0] >= predictor.threshold)
    per_layer_preds = logits.argmax(-1)
    stopped = per_layer_preds.gather(1, torch.minimum(actual, predicted).reshape(-1, 1))
    exited = per_layer_preds.gather(1, actual.reshape(-1, 1))
    return {**stats.as_dict(), "table": predictor.kind, "bins": predictor.bins, "threshold": predictor.threshold,
            "score_at_threshold": float(column_metric(metric, exited, labels)[0]),
            "score_stop_at_prediction": float(column_metric(metric, stopped, labels)[0]),
            "mean_predicted_layer": float(predicted.double().mean()) + 1,
            "mean_actual_layer": float(actual.double().mean()) + 1}
