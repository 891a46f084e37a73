"""hparams_search=entropy_threshold: an Optuna study over the exit threshold scored from cached exit logits."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from lowbit.algorithms.early_exit import load_exit_cache, threshold_curve

pytestmark = pytest.mark.timeout(600)

RUN = ["model=tiny", "logger=none", "callbacks=default", "trainer.max_epochs=1", "data.max_train_samples=32",
       "data.max_eval_samples=32", "data.batch_size=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
       "early_exit.offramp_epochs=1"]


def test_threshold_sweep_scores_trials_from_the_cache(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, str(ROOT / "train.py"), "+experiment=deebert_sst2", *RUN,
                    f"hydra.run.dir={run_dir}", f"paths.log_dir={tmp_path}/logs"], check=True, cwd=ROOT, env=env,
                   capture_output=True, timeout=400)
    cache = load_exit_cache(run_dir)
    sweep = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "+experiment=deebert_sst2",
                            "+hparams_search=entropy_threshold", "model=tiny", f"early_exit.scores_from={run_dir}",
                            f"paths.log_dir={tmp_path}/logs", "hydra.sweeper.n_trials=6"],
                           check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    db = tmp_path / "logs" / "sweeps" / "deebert_sst2_entropy_threshold" / "optuna.db"
    with sqlite3.connect(db) as con:
        rows = con.execute("select t.trial_id, p.param_value from trials t join trial_params p "
                           "on t.trial_id = p.trial_id where t.state='COMPLETE'").fetchall()
        values = {tid: [v for (v,) in con.execute(
            "select value from trial_values where trial_id=? order by objective", (tid,))] for tid, _ in rows}
    assert len(rows) == 6
    for tid, threshold in rows:  # each trial's objectives are the cached curve at its threshold
        want = threshold_curve(cache["logits"], cache["labels"], torch.tensor([threshold]))
        assert values[tid] == pytest.approx([float(want.score[0]), float(want.saving[0])])
    # no model ran: the trials wrote no checkpoints
    assert not list((tmp_path / "logs" / "sweeps").rglob("*.ckpt"))


def test_threshold_x_bits_sweep_composes_and_its_objectives_are_reported(make_cfg):
    """The joint sweep trains every trial: its config builds (dry run) and names metrics a run reports."""
    from lowbit.data.tasks import GLUE_TASKS
    from lowbit.pipeline import dry_run
    from lowbit.validate import reported_metric

    cfg = make_cfg(["+experiment=deebert_sst2", "+hparams_search=entropy_threshold_bits", "model=tiny",
                    "early_exit.threshold=0.3", "bit_assignment.bits=4"])
    assert list(cfg.objectives) == ["early_exit/score", "early_exit/saving", "model/size_bits"]
    assert all(reported_metric(m, GLUE_TASKS.get("sst2")) for m in cfg.objectives)
    summary = dry_run(cfg)
    assert summary["methods"]["quantizer"] == "uniform" and summary["methods"]["early_exit"] == "entropy"
