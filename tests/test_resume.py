"""An interrupted run resumes from its last checkpoint: nothing is lost, nothing is redone."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_RUN

from lowbit.module import CompressionModule
from lowbit.pipeline import run

BASE = [o for o in TINY_RUN if o not in ("callbacks=none", "trainer.fast_dev_run=true")] + [
    "callbacks=default", "~callbacks.progress_bar", "trainer.enable_progress_bar=false", "trainer.max_epochs=3",
    "data.max_train_samples=48", "data.batch_size=8"]


def test_resume_from_last_checkpoint(make_cfg, monkeypatch):
    steps = []
    original = CompressionModule.training_step
    monkeypatch.setattr(CompressionModule, "training_step",
                        lambda self, batch, idx: steps.append(self.global_step) or original(self, batch, idx))
    first = make_cfg([*BASE, "trainer.max_steps=2"])
    run(first)
    assert steps == [0, 1]
    assert Path(first.paths.output_dir, "checkpoints", "last.ckpt").exists()
    steps.clear()
    second = make_cfg([*BASE, "trainer.max_steps=5", "ckpt_path=last"])  # same output dir as `first`
    run(second)
    assert steps == [2, 3, 4]  # continued from step 2: the first two steps were not redone
    summary = json.loads(Path(second.paths.output_dir, "summary.json").read_text())
    assert summary["train/global_step"] == 5


def test_last_checkpoint_holds_the_final_weights(make_cfg):
    """Lightning rewrites last.ckpt only when the monitored best improves; lowbit always writes the final state."""
    import torch

    from lowbit.pipeline import train

    cfg = make_cfg([*BASE, "trainer.max_steps=7", "+trainer.val_check_interval=2", "+trainer.limit_val_batches=1",
                    "quantizer=uniform", "bit_assignment.bits=4"])
    result = train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == result.metrics["train/global_step"] == 7
    final = result.job.model.state_dict()
    saved = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert saved.keys() == final.keys() and all(torch.equal(saved[k], final[k]) for k in final)


def test_a_run_resumed_after_its_last_step_reports_what_the_finished_run_did(make_cfg, monkeypatch):
    """Killed after the last training step (in the closing validation or while writing the summary), the rerun
    trains nothing more; its summary still has the loss terms of the last step, equal to the uninterrupted run's."""
    overrides = [*BASE, "trainer.max_steps=3", "finetune.epochs=1", "distillation=kd_logits", "quantizer=uniform",
                 "bit_assignment.bits=4"]
    first = make_cfg(overrides)
    run(first)
    done = json.loads(Path(first.paths.output_dir, "summary.json").read_text())
    assert {"train/loss_logits", "train/loss_task"} <= set(done)
    steps = []
    original = CompressionModule.training_step
    monkeypatch.setattr(CompressionModule, "training_step",
                        lambda self, batch, idx: steps.append(self.global_step) or original(self, batch, idx))
    second = make_cfg([*overrides, "ckpt_path=last"])  # the same output dir: resumes from the final last.ckpt
    run(second)
    assert steps == []  # nothing left to train
    again = json.loads(Path(second.paths.output_dir, "summary.json").read_text())
    for key in ("train/loss_logits", "train/loss_task", "train/global_step", "val/acc"):
        assert again[key] == done[key], key
