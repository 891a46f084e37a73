"""Pipeline stages: dropout is on while training (both stages), the fine-tune stage feeds the next."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_RUN
from lowbit.module import CompressionModule
from lowbit.pipeline import run


def test_every_stage_trains_in_train_mode_and_reports_teacher_metrics(make_cfg, monkeypatch):
    modes = []
    original = CompressionModule.training_step

    def record(self, batch, idx):
        dropouts = [m.training for m in self.model.modules() if type(m).__name__ == "Dropout"]
        modes.append((self.metric_prefix, self.model.training, all(dropouts)))
        return original(self, batch, idx)

    monkeypatch.setattr(CompressionModule, "training_step", record)
    cfg = make_cfg([*TINY_RUN, "finetune.epochs=1", "quantizer=ternary_twn", "bit_assignment=w2e2",
                    "distillation=ternarybert"])
    run(cfg)
    assert [m[0] for m in modes] == ["finetune/", ""]  # float stage first, then compression
    assert all(training and dropout_on for _, training, dropout_on in modes)
    summary = json.loads(Path(cfg.paths.output_dir, "summary.json").read_text())
    assert "finetune/val/acc" in summary and "val/acc" in summary
    assert Path(cfg.paths.output_dir, "finetune", "done.json").exists()
