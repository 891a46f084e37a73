"""Sweeps on a real PostgreSQL server (started here, on 127.0.0.1 and a unix socket): several workers on one
study, a worker killed mid-trial, and the storage password kept out of every file the sweep writes.

Skipped, with the reason, where PostgreSQL or its driver is not installed (``make test-deps`` installs the
server with apt-get as root; ``pip install -e '.[postgres]'`` the driver).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT
from optuna.trial import TrialState

from hydra_plugins.lowbit_optuna_sweeper._impl import sqlalchemy_url
from lowbit.bench.sweep_throughput import PostgresUnavailable, TempPostgres, sweep_cmd

pytestmark = pytest.mark.timeout(300)
FAST_HEARTBEAT = ("hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3")


@pytest.fixture(scope="module")
def postgres():
    try:
        server = TempPostgres().start()
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL test server: {e}")
    yield server
    server.stop()


def _storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(sqlalchemy_url(url))


def _trials(storage, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    except KeyError:  # not created yet
        return []


def _files_containing(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_two_workers_one_killed_mid_trial(postgres, tmp_path):
    """Workers A and B share a study (n_trials=3); A is SIGKILLed while it runs a trial; B goes on and a
    replacement worker C joins. The dead trial is failed after grace_period and re-run once."""
    study = "pg_workers"
    cmd = sweep_cmd(tmp_path / "logs", study, 3, 2, f"hydra.sweeper.storage={postgres.url}", *FAST_HEARTBEAT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    storage = _storage(postgres.url)
    a, b = start(), start()
    killed = None
    try:
        deadline = time.time() + 150
        while killed is None and time.time() < deadline and a.poll() is None:
            mine = [t for t in _trials(storage, study) if t.state == TrialState.RUNNING
                    and t.user_attrs.get("lowbit_worker", "").endswith(f":{a.pid}")]
            if not mine:
                time.sleep(0.2)
                continue
            os.killpg(a.pid, signal.SIGSTOP)  # freeze A, then make sure its trial is still running
            if _trials(storage, study)[mine[0].number].state == TrialState.RUNNING:
                os.killpg(a.pid, signal.SIGKILL)
                killed = mine[0]
            else:
                os.killpg(a.pid, signal.SIGCONT)
        assert killed is not None, "worker A never ran a trial: " + (a.communicate(timeout=60)[0][-3000:]
                                                                    if a.poll() is not None else "timeout")
        a.wait(timeout=30)
        c = start()  # a replacement worker (a requeued Slurm job), same command
        out_b, out_c = b.communicate(timeout=240)[0], c.communicate(timeout=240)[0]
    finally:
        for p in (a, b, *([c] if killed is not None else [])):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    out_a = a.communicate()[0]
    assert a.returncode == -signal.SIGKILL
    for rc, out in ((b.returncode, out_b), (c.returncode, out_c)):
        assert rc == 0 and "Traceback" not in out, out[-4000:]

    trials = _trials(storage, study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3  # across all workers: none lost, none extra
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dead = trials[killed.number]
    assert dead.state == TrialState.FAIL and dead.user_attrs["lowbit_interrupted"] is True
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("lowbit_surplus")]
    assert failed == [dead]  # nothing else failed
    retries = [t for t in trials if t.user_attrs.get("lowbit_requeued_from") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE  # retried once, and it finished
    assert retries[0].params == dead.params and retries[0].system_attrs["failed_trial"] == killed.number
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # no trial run twice
    assert {t.user_attrs["lowbit_worker"].rsplit(":", 1)[1] for t in complete} <= {str(b.pid), str(c.pid), str(a.pid)}

    # the password (given on the command line here) is in no file of the sweep and in no log line
    assert "written as '***'" in out_b
    assert _files_containing(tmp_path, postgres.password) == []
    for out in (out_a, out_b, out_c):
        assert postgres.password not in out
    hydra_yaml = next((tmp_path / "logs" / "sweeps" / study).glob("*/.hydra/hydra.yaml")).read_text()
    assert f"postgresql://{postgres.user}:***@127.0.0.1:{postgres.port}/{postgres.database}" in hydra_yaml


def test_password_from_env_var_reaches_no_file_nor_wandb(postgres, tmp_path):
    """The recommended way: hydra.sweeper.storage='${oc.env:LOWBIT_OPTUNA_STORAGE}'; a 2-trial sweep logging to
    W&B (offline); the password appears in no file under the sweep dir or W&B's dirs, nor in the output."""
    study = "pg_secret"
    wandb_dirs = {k: tmp_path / k.lower() for k in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOWBIT_OPTUNA_STORAGE": postgres.url, "WANDB_MODE": "offline",
           **{k: str(v) for k, v in wandb_dirs.items()}}
    cmd = sweep_cmd(tmp_path / "logs", study, 2, 2, "hydra.sweeper.storage='${oc.env:LOWBIT_OPTUNA_STORAGE}'")
    cmd[cmd.index("logger=none")] = "logger=wandb"
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    trials = _trials(_storage(postgres.url), study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    sweep_dir = tmp_path / "logs" / "sweeps" / study
    assert "${oc.env:LOWBIT_OPTUNA_STORAGE}" in (sweep_dir / "multirun.yaml").read_text()
    assert (sweep_dir / "optimization_results.yaml").exists()
    assert list(sweep_dir.glob("*/.hydra/overrides.yaml")) and list(sweep_dir.rglob("*.wandb"))  # W&B ran
    assert _files_containing(tmp_path, postgres.password) == []
    assert postgres.password not in out
