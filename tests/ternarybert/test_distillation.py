"""Distillation losses against hand computations; the teacher stays frozen; all terms are trained."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_RUN
from lowbit.algorithms.distillation import (Distillation, attention_score_mse, hidden_mse, kl_divergence,
                                            soft_cross_entropy)
from lowbit.errors import LowbitConfigError
from lowbit.pipeline import setup


def test_soft_cross_entropy_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]])  # teacher probs [1/4, 3/4]
    log_p = [1 - math.log(1 + math.e), -math.log(1 + math.e)]
    expected = -(0.25 * log_p[0] + 0.75 * log_p[1])
    assert soft_cross_entropy(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_kl_divergence_by_hand_with_temperature():
    s = torch.tensor([[2.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    T = 2.0
    p = torch.softmax(t / T, -1)[0]
    q = torch.softmax(s / T, -1)[0]
    expected = float((p * (p.log() - q.log())).sum()) * T * T
    assert kl_divergence(s, t, T).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_hidden_mse_sums_layers():
    s = [torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]
    t = [torch.ones(1, 2, 2), torch.ones(1, 2, 2) * 3]
    assert hidden_mse(s, t).item() == pytest.approx(1.0 + 4.0)


def test_attention_mse_zeroes_masked_positions():
    s = torch.tensor([[[[1.0, -3.4e38]]]])  # key 1 is padding: -inf-like after masking
    t = torch.tensor([[[[3.0, -3.4e38]]]])
    masked = torch.tensor([[[[False, True]]]])
    assert attention_score_mse([s], [t], [masked]).item() == pytest.approx((1 - 3) ** 2 / 2)


def test_distillation_needs_a_finetuned_teacher(make_cfg):
    cfg = make_cfg([*TINY_RUN, "distillation=ternarybert", "quantizer=ternary_twn", "bit_assignment.bits=2"])
    with pytest.raises(LowbitConfigError, match="distillation needs a fine-tuned teacher"):
        setup(cfg)


def test_bad_distillation_values_name_the_option():
    with pytest.raises(LowbitConfigError, match="distillation.logits_loss"):
        Distillation(logits_loss="mse2")
    with pytest.raises(LowbitConfigError, match="distillation.hidden_weight"):
        Distillation(hidden_weight=-1)


def test_teacher_frozen_and_every_term_trains(make_cfg):
    cfg = make_cfg([o for o in TINY_RUN if o != "trainer.fast_dev_run=true"] + [
        "distillation=ternarybert", "quantizer=ternary_twn", "bit_assignment.bits=2", "finetune.epochs=1",
        "trainer.max_steps=3", "+trainer.limit_val_batches=1", "trainer.log_every_n_steps=1"])
    job = setup(cfg)
    distill = job.methods["distillation"]
    teacher_before = {k: v.clone() for k, v in distill.teacher.state_dict().items()}
    student_before = job.module.model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    assert not distill.teacher.training and not any(p.requires_grad for p in distill.teacher.parameters())
    job.trainer.fit(job.module, datamodule=job.datamodule)
    for k, v in distill.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert not torch.equal(job.module.model.bert.encoder.layer[0].attention.self.query.weight, student_before)
    logged = job.trainer.logged_metrics
    for term in ("train/loss_logits", "train/loss_hidden", "train/loss_attn"):
        assert float(logged[term]) > 0, term
    assert "train/loss_task" not in logged  # TernaryBERT uses no hard-label loss
    # the student started from the teacher: before training their float weights were identical
    assert torch.equal(teacher_before["bert.encoder.layer.0.attention.self.query.weight"], student_before)
