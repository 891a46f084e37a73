"""LAT against its definition: the D-weighted ternary fit, read from Adam's real state."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import TINY_RUN

from lowbit.algorithms.ternarybert import (
    AdamCurvatureCallback,
    TernaryLATQuantizer,
    lat_exact_threshold_alpha,
    lat_threshold_alpha,
    twn_threshold_alpha,
)
from lowbit.pipeline import setup


def objective(w, d, delta, alpha):
    b = torch.sign(w) * (w.abs() > delta)
    return float((d * (alpha * b - w) ** 2).sum())


def brute_force(w, d):
    """Global optimum over all ternary patterns of a tiny vector (α optimal for each pattern)."""
    best = float("inf")
    for b in itertools.product((-1.0, 0.0, 1.0), repeat=w.numel()):
        b = torch.tensor(b)
        if not b.any():
            continue
        alpha = float((d * w * b).sum() / (d * b * b).sum())
        if alpha <= 0:
            continue
        best = min(best, float((d * (alpha * b - w) ** 2).sum()))
    return best


def test_uniform_curvature_gives_the_unweighted_ternary_fit_and_is_scale_free():
    torch.manual_seed(0)
    w = torch.randn(1, 64)
    d1, alpha1 = lat_threshold_alpha(w, torch.ones_like(w), iterations=20)
    d2, alpha2 = lat_threshold_alpha(w, torch.full_like(w, 7.5), iterations=20)
    torch.testing.assert_close(alpha1, alpha2)
    # fixed point of the unweighted problem: alpha = mean |w| over |w| > alpha/2 (TWN-like)
    kept = w.abs() > alpha1 / 2
    torch.testing.assert_close(alpha1, w.abs()[kept].mean().reshape(1, 1))
    # and it fits at least as well as TWN's 0.7·mean heuristic
    td, ta = twn_threshold_alpha(w)
    assert objective(w, torch.ones_like(w), d1, alpha1) <= objective(w, torch.ones_like(w), td, ta) + 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_exact_solver_matches_brute_force_and_alternating_improves_on_twn(seed):
    torch.manual_seed(seed)
    w = torch.randn(1, 7)
    d = torch.rand(1, 7) * 3 + 0.1
    delta, alpha = lat_exact_threshold_alpha(w, d)
    assert objective(w, d, delta, alpha) == pytest.approx(brute_force(w[0], d[0]), rel=1e-5)
    ad, aa = lat_threshold_alpha(w, d, iterations=30)
    td, ta = twn_threshold_alpha(w)
    assert objective(w, d, delta, alpha) - 1e-6 <= objective(w, d, ad, aa) <= objective(w, d, td, ta) + 1e-6
    # alternating stops at a fixed point: one more alternation changes nothing
    kept = w.abs() > ad
    torch.testing.assert_close(aa, ((d * w.abs() * kept).sum() / (d * kept).sum()).reshape(1, 1))


def test_nonuniform_curvature_moves_threshold_the_right_way():
    torch.manual_seed(1)
    w = torch.randn(1, 200)
    uniform_delta, _ = lat_threshold_alpha(w, torch.ones_like(w))
    big = w.abs() > w.abs().median()
    # curvature on the large weights: fitting them matters more -> larger alpha -> higher threshold
    high_delta, _ = lat_threshold_alpha(w, torch.where(big, 10.0, 1.0))
    # curvature on the small weights: alpha shrinks towards them -> lower threshold
    low_delta, _ = lat_threshold_alpha(w, torch.where(big, 1.0, 10.0))
    assert high_delta.item() > uniform_delta.item() > low_delta.item()


def test_falls_back_to_twn_without_curvature_and_uses_it_when_set():
    torch.manual_seed(2)
    w = torch.randn(8, 16)
    lat = TernaryLATQuantizer(clip=None)
    twn_delta, twn_alpha = twn_threshold_alpha(w.reshape(1, -1))
    q = lat(w)
    torch.testing.assert_close(q.abs().max(), twn_alpha.reshape(()))
    lat.curvature = torch.rand_like(w) + 0.1
    delta, alpha = lat_threshold_alpha(w.reshape(1, -1), lat.curvature.reshape(1, -1))
    q = lat(w)
    torch.testing.assert_close(q.abs().max(), alpha.reshape(()))
    values = q.unique()
    assert values.numel() == 3
    torch.testing.assert_close(values, torch.stack([-alpha, torch.zeros(1, 1), alpha]).reshape(3))


def test_lat_reads_adams_second_moment_during_training(make_cfg):
    cfg = make_cfg([o for o in TINY_RUN if o != "trainer.fast_dev_run=true"] + [
        "quantizer=ternary_lat", "bit_assignment.bits=2", "bit_assignment.word_embedding=2",
        "trainer.max_steps=3", "+trainer.limit_val_batches=1"])
    job = setup(cfg)
    layer = job.module.model.bert.encoder.layer[0].intermediate.dense
    assert isinstance(layer.quantizer, TernaryLATQuantizer)
    job.trainer.fit(job.module, datamodule=job.datamodule)
    d_used = layer.quantizer.curvature  # set by the callback before the last step
    assert d_used is not None and d_used.shape == layer.weight.shape and torch.all(d_used > 0)
    emb = job.module.model.bert.embeddings.word_embeddings
    assert emb.quantizer.curvature is not None
    # the callback's D is exactly sqrt(v / (1 - beta2^t)) + eps of the optimizer's own state
    opt = job.trainer.optimizers[0]
    AdamCurvatureCallback(eps=1e-8).on_train_batch_start(job.trainer, job.module, None, 0)
    state, beta2 = opt.state[layer.weight], opt.param_groups[0]["betas"][1]
    expected = (state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))).sqrt() + 1e-8
    torch.testing.assert_close(layer.quantizer.curvature, expected)
