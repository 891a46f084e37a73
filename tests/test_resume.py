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
