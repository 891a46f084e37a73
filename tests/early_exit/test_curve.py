"""Entropy, exit layers, threshold curves and operating points against their definitions (brute force)."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.algorithms.early_exit.curve import (
    candidate_thresholds,
    entropy,
    exit_layers,
    operating_points,
    threshold_curve,
)
from lowbit.data.metrics import compute_metrics


def deebert_entropy(x: torch.Tensor) -> torch.Tensor:
    """DeeBERT's formula (castorini/DeeBERT, modeling_highway_bert.py): overflows for large logits."""
    exp_x = torch.exp(x)
    a = torch.sum(exp_x, dim=1)
    b = torch.sum(x * exp_x, dim=1)
    return torch.log(a) - b / a


def test_entropy_is_the_definition_and_stays_finite():
    torch.manual_seed(0)
    x = torch.randn(50, 3, dtype=torch.float64) * 4
    p = torch.softmax(x, -1)
    torch.testing.assert_close(entropy(x).double(), -(p * p.log()).sum(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(entropy(x[:, :2]).double(), deebert_entropy(x[:, :2]), atol=1e-6, rtol=1e-5)
    big = torch.tensor([[120.0, 0.0], [120.0, 119.0], [0.0, 0.0]])
    assert torch.isnan(deebert_entropy(big)).any()  # why the official formula is not used
    h = entropy(big)
    assert torch.isfinite(h).all()
    assert h[0] == 0.0 and abs(float(h[2]) - math.log(2)) < 1e-6
    q = torch.softmax(torch.tensor([1.0, 0.0], dtype=torch.float64), 0)
    assert abs(float(h[1]) - float(-(q * q.log()).sum())) < 1e-6


def brute_exit_layer(entropies: list[float], s: float) -> int:
    for i, h in enumerate(entropies):
        if h < s:  # DeeBERT: highway_entropy < early_exit_entropy
            return i
    return len(entropies)  # the final head


def test_exit_layers_match_the_first_offramp_below_threshold():
    torch.manual_seed(1)
    ent = torch.rand(40, 5)
    ent[0] = 0.3  # ties with a threshold: strict inequality
    thresholds = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.9, 1.1])
    got = exit_layers(ent, thresholds)
    for n in range(ent.shape[0]):
        for k, s in enumerate(thresholds.tolist()):
            assert int(got[n, k]) == brute_exit_layer(ent[n].tolist(), s)


@pytest.mark.parametrize("metric", ["acc", "f1", "mcc"])
def test_curve_matches_a_loop_over_thresholds(metric):
    torch.manual_seed(2)
    n, layers, classes = 200, 4, 2
    logits = torch.randn(n, layers, classes) * 2
    labels = torch.randint(0, classes, (n,))
    thresholds = torch.linspace(0, math.log(classes), 17, dtype=torch.float64)
    curve = threshold_curve(logits, labels, thresholds, metric)
    ent = entropy(logits[:, :-1])
    for k, s in enumerate(thresholds.tolist()):
        layer = torch.tensor([brute_exit_layer(ent[i].tolist(), s) for i in range(n)])
        preds = logits[torch.arange(n), layer].argmax(-1)
        want = compute_metrics((metric,), preds, labels)[metric]
        assert abs(float(curve.score[k]) - want) < 1e-6
        counts = torch.bincount(layer, minlength=layers)
        assert curve.exit_counts[k].tolist() == counts.tolist()
        # DeeBERT: 1 - sum_i i*N_i / (n * sum_i N_i), i the 1-based layer a sample leaves after
        saving = 1 - sum((i + 1) * int(c) for i, c in enumerate(counts)) / (layers * n)
        assert abs(float(curve.saving[k]) - saving) < 1e-12


def test_multiclass_accuracy_curve():
    torch.manual_seed(3)
    logits, labels = torch.randn(90, 3, 3), torch.randint(0, 3, (90,))
    curve = threshold_curve(logits, labels, torch.tensor([0.0, 2.0]))
    assert abs(float(curve.score[0]) - float((logits[:, -1].argmax(-1) == labels).double().mean())) < 1e-12
    assert abs(float(curve.score[1]) - float((logits[:, 0].argmax(-1) == labels).double().mean())) < 1e-12
    assert float(curve.saving[1]) == pytest.approx(1 - 1 / 3)


def test_candidate_thresholds_give_the_exact_curve():
    """Every (score, saving) any threshold can give appears among the candidates, none sits on an entropy."""
    torch.manual_seed(4)
    logits, labels = torch.randn(60, 4, 2), torch.randint(0, 2, (60,))
    cands = candidate_thresholds(logits)
    exact = threshold_curve(logits, labels, cands)
    dense = threshold_curve(logits, labels, torch.linspace(0, 0.8, 20001, dtype=torch.float64))
    exact_pairs = {(round(float(a), 9), round(float(b), 9)) for a, b in zip(exact.score, exact.saving)}
    dense_pairs = {(round(float(a), 9), round(float(b), 9)) for a, b in zip(dense.score, dense.saving)}
    assert dense_pairs <= exact_pairs
    running_min = entropy(logits[:, :-1]).double().cummin(1).values
    assert (running_min.reshape(-1, 1) - cands.reshape(1, -1)).abs().min() > 0


def test_operating_points_pick_the_largest_saving_within_tolerance():
    from lowbit.algorithms.early_exit.curve import ExitCurve

    curve = ExitCurve(thresholds=torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64),
                      score=torch.tensor([0.90, 0.899, 0.885, 0.86], dtype=torch.float64),
                      saving=torch.tensor([0.0, 0.2, 0.4, 0.6], dtype=torch.float64),
                      exit_counts=torch.zeros(4, 3, dtype=torch.long), metric="acc")
    p02, p1, p3, p5 = operating_points(curve, (0.2, 1.0, 3.0, 5.0))
    assert (p02.threshold, p02.saving) == (0.1, pytest.approx(0.2))
    assert p1.threshold == 0.1  # 0.885 is 1.5 points down
    assert p3.threshold == 0.2 and p5.threshold == 0.3
