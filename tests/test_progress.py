"""TextProgress: the plain-text lines a run without a progress bar writes (tables, nohup, CI)."""

from __future__ import annotations

import logging
import re

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lowbit.errors import LowbitConfigError
from lowbit.progress import TextProgress, format_duration


class _Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val/mse", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)  # 10 steps per epoch


def _fit(callback, tmp_path, bar=False, epochs=2, accumulate=1):
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=bar, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=1, accumulate_grad_batches=accumulate)
    trainer.fit(_Regression(), _loader(), _loader())
    return trainer


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "lowbit.progress"]


def test_step_lines_every_n_steps_with_loss_rate_and_eta(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lowbit.progress")
    callback = TextProgress(every_seconds=0, every_n_steps=5, label="job")
    ticks = iter(range(0, 10_000, 2))  # the clock advances 2 s per reading: 2 s per step
    callback._clock = lambda: next(ticks)
    _fit(callback, tmp_path)
    lines = _lines(caplog)
    assert lines[0] == "[job] training: 0/20 (0%) steps, 2 epoch(s)"
    steps = [line for line in lines if " step " in line and "validation" not in line]
    assert [re.search(r"step (\d+)/20", s).group(1) for s in steps] == ["5", "10", "15", "20"]
    first = steps[0]
    assert first.startswith("[job] epoch 1/2 step 5/20 (25%) loss ")
    assert " lr 0.05 " in first and "2 s/step" in first and first.endswith("ETA 30s")  # 15 steps left at 2 s
    assert steps[-1].startswith("[job] epoch 2/2 step 20/20 (100%)") and steps[-1].endswith("ETA 0s")
    loss = float(re.search(r"loss (\S+)", first).group(1))
    assert 0 < loss < 100
    vals = [line for line in lines if "validation" in line]
    assert len(vals) == 2  # one per epoch, none for the sanity check
    assert re.fullmatch(r"\[job\] validation after epoch 1, step 10: val/mse \d\S*", vals[0])
    assert lines[-1].startswith("[job] training done: 20 steps in ")


def test_time_trigger_writes_at_most_one_line_per_interval(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lowbit.progress")
    callback = TextProgress(every_seconds=7, label="t")
    ticks = iter(range(0, 10_000, 2))
    callback._clock = lambda: next(ticks)
    _fit(callback, tmp_path, epochs=1)
    steps = [int(re.search(r"step (\d+)/10", line).group(1)) for line in _lines(caplog)
             if re.search(r"\] epoch \d", line)]
    # the clock reads 0 at start and +2 per step: lines once 7 s have passed since the last one (steps 4, 8)
    assert steps == [4, 8]


def test_accumulation_counts_optimizer_steps(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lowbit.progress")
    _fit(TextProgress(every_seconds=0, every_n_steps=1, label="acc"), tmp_path, epochs=1, accumulate=2)
    steps = [line for line in _lines(caplog) if re.search(r"\] epoch \d", line)]
    assert [re.search(r"step (\S+) ", s).group(1) for s in steps] == [f"{i}/5" for i in range(1, 6)]


def test_silent_beside_a_progress_bar_on_a_terminal_unless_asked(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="lowbit.progress")
    # pytest captures stdout: a bar there is not seen, so the lines are written (as for nohup or a table's log)
    _fit(TextProgress(every_seconds=0, every_n_steps=5), tmp_path, bar=True, epochs=1)
    assert any("step 5/10" in line for line in _lines(caplog))
    caplog.clear()
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    _fit(TextProgress(every_seconds=0, every_n_steps=1), tmp_path, bar=True, epochs=1)
    assert _lines(caplog) == []
    _fit(TextProgress(every_seconds=0, every_n_steps=5, with_progress_bar=True), tmp_path, bar=True, epochs=1)
    assert any("step 5/10" in line for line in _lines(caplog))


@pytest.mark.parametrize("kwargs, match", [
    ({"every_seconds": -1}, "every_seconds must be a number >= 0"),
    ({"every_n_steps": 1.5}, "every_n_steps must be an integer >= 0"),
    ({"every_seconds": 0, "every_n_steps": 0}, "would never write a step line"),
])
def test_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(LowbitConfigError, match=match):
        TextProgress(**kwargs)


def test_format_duration():
    assert [format_duration(s) for s in (9.4, 59.6, 405, 3725, float("nan"), -1)] == \
        ["9s", "1m00s", "6m45s", "1h02m", "?", "?"]


def test_a_run_without_a_bar_writes_lines_for_its_stages(make_cfg, caplog):
    """The float fine-tune stage (never a bar) and the main stage, each under its own label."""
    from conftest import TINY_RUN

    from lowbit.pipeline import run

    caplog.set_level(logging.INFO, logger="lowbit.progress")
    overrides = [o for o in TINY_RUN if not o.startswith("callbacks=")]
    run(make_cfg([*overrides, "callbacks=default", "callbacks.text_progress.every_seconds=0",
                  "callbacks.text_progress.every_n_steps=1", "finetune.epochs=1", "task_name=tiny"]))
    lines = _lines(caplog)
    assert any(line.startswith("[tiny:finetune] epoch 1/1 step 1/1 (100%) loss ") for line in lines), lines
    assert any(line.startswith("[tiny] epoch 1/") and " step 1/1 (100%) loss " in line for line in lines), lines
    assert any(line.startswith("[tiny] validation after epoch 1, step 1: ") and "val/acc" in line for line in lines)
    # each stage's closing evaluation (trainer.validate after fit) is not numbered as a further epoch
    assert any(line.startswith("[tiny:finetune] validation (final, step 1): finetune/val/acc ") for line in lines)
    assert not any("after epoch 2" in line for line in lines), lines


def test_a_run_bounded_by_steps_shows_an_unknown_epoch_budget(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lowbit.progress")
    trainer = pl.Trainer(max_epochs=-1, max_steps=4, callbacks=[TextProgress(every_seconds=0, every_n_steps=2)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(_Regression(), _loader(), _loader())
    steps = [line for line in _lines(caplog) if re.search(r"\] epoch \d", line)]
    assert [s.split(" loss")[0] for s in steps] == ["[train] epoch 1/? step 2/4 (50%)", "[train] epoch 1/? step 4/4 (100%)"]
