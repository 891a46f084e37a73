"""Multi-process training: DDP on CPU (gloo, 2 processes) gives the single-process result; device checks;
Hydra's submitit launchers (local and Slurm) with lowbit's sweeps.

Each DDP case runs ``train.py`` twice on the tiny model: one process at ``data.batch_size=32`` and two
processes (``trainer=ddp trainer.accelerator=cpu trainer.devices=2``) at 16 per process, the same global
batch. The train set has 32 examples, so every step's global batch is the whole set and neither the
sample order nor the sharding matters; dropout is off and ``data.max_length=24`` truncates every MRPC
pair (no padding, so no per-shard padding length). What remains different is float reduction order
(DDP averages two 16-example gradient means; one process takes one 32-example mean), i.e. ~1e-9 on
weights after a few steps. Tolerances: dev metrics equal to 1e-6 (31 eval examples: a prediction flip
would move accuracy by 1/31), weights to atol 1e-5, EMA ranges to rtol 1e-5; the two ranks must hold
bit-identical EMA ranges and weights (``lowbit.distributed.SyncCheck`` raises otherwise, and its
per-rank dumps are compared here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_train

from lowbit.distributed import check_trainer_devices, gather_eval
from lowbit.errors import LowbitConfigError

pytestmark = pytest.mark.timeout(300)

N_EVAL = 31  # odd: the 2-rank DistributedSampler pads the eval set with a duplicate, which must be dropped

DDP_RUN = ["model=tiny", "quantizer=uniform", "quantizer.activation.mode=ema", "data=mrpc", "data.max_length=24",
           "data.max_train_samples=32", f"data.max_eval_samples={N_EVAL}", "logger=none", "callbacks=none",
           "trainer.enable_progress_bar=false", "trainer.max_steps=3", "optim.lr=1e-3",
           "+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0",
           "+callbacks.sync_check._target_=lowbit.distributed.SyncCheck"]

CASES = {
    "uniform_ema": [],
    "kd_logits_finetune": ["distillation=kd_logits", "finetune.epochs=1", "finetune.lr=1e-3"],
}


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on a timeout kill the whole group (DDP's rank-1 child included)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(cmd[2:])}\n{out[-2000:]}{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("LOCAL_RANK", None)
    return env


def _train_ddp(tmp_path: Path, overrides: list[str]) -> tuple[dict, Path, float]:
    """``python train.py OVERRIDES`` with 2 CPU processes (Lightning launches rank 1)."""
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", f"hydra.run.dir={run_dir}", f"paths.log_dir={tmp_path}/logs",
           f"paths.cache_dir={tmp_path}/cache", f"+callbacks.sync_check.dump_dir={run_dir}/dump"]
    start = time.perf_counter()
    result = _run(cmd)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads((run_dir / "summary.json").read_text()), run_dir / "dump", seconds


def _train_one(tmp_path: Path, overrides: list[str]) -> tuple[dict, Path, float]:
    """The same job in this process (one process, no process group): what ``python train.py`` runs."""
    from lowbit.pipeline import train

    dump = tmp_path / "one" / "dump"
    cfg = compose_train([*overrides, "trainer.accelerator=cpu", f"+callbacks.sync_check.dump_dir={dump}"],
                        tmp_path)
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    return json.loads(Path(cfg.paths.output_dir, "summary.json").read_text()), dump, seconds


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_two_processes_match_one(tmp_path, case):
    extra = CASES[case]
    two, two_dump, t2 = _train_ddp(tmp_path, [*DDP_RUN, *extra, "data.batch_size=16"])  # 2 x 16 per step
    one, one_dump, t1 = _train_one(tmp_path, [*DDP_RUN, *extra, "data.batch_size=32"])
    print(f"{case}: 1 process {t1:.1f}s (in-process), 2 processes {t2:.1f}s; val/acc {one['val/acc']:.6f} vs "
          f"{two['val/acc']:.6f}, val/f1 {one['val/f1']:.6f} vs {two['val/f1']:.6f}")
    assert one["train/global_step"] == two["train/global_step"] == 3
    for metric in ("val/acc", "val/f1"):
        assert two[metric] == pytest.approx(one[metric], abs=1e-6), metric
    # metrics over exactly the 31 eval examples (the sampler's padding duplicate dropped)
    assert abs(two["val/acc"] * N_EVAL - round(two["val/acc"] * N_EVAL)) < 1e-4
    if case == "kd_logits_finetune":
        assert two["finetune/val/acc"] == pytest.approx(one["finetune/val/acc"], abs=1e-6)
        assert two["distillation/loss_terms"] == "logits" and two["distillation/teacher_frozen"]

    ref = torch.load(one_dump / "rank0-fit0.pt")
    rank0, rank1 = torch.load(two_dump / "rank0-fit0.pt"), torch.load(two_dump / "rank1-fit0.pt")
    assert ref["observers"], "no EMA observers in the model"
    for kind in ("observers", "params"):
        for name, value in rank0[kind].items():
            assert torch.equal(value, rank1[kind][name]), f"ranks differ in {kind} {name}"
    for name, value in rank0["observers"].items():  # the global batch's range, as one process has it
        torch.testing.assert_close(value, ref["observers"][name], rtol=1e-5, atol=1e-6, msg=name)
    for name, value in rank0["params"].items():
        torch.testing.assert_close(value, ref["params"][name], rtol=1e-4, atol=1e-5, msg=name)


def test_gather_eval_drops_sampler_padding(monkeypatch):
    """5 examples on 2 ranks: DistributedSampler gives rank 0 [0, 2, 4] and rank 1 [1, 3, 0] (0 repeated)."""
    import lowbit.distributed as D

    shards = [(torch.tensor([0, 2, 4]), {"preds": torch.tensor([10, 12, 14]), "extra": torch.ones(3, 2)}),
              (torch.tensor([1, 3, 0]), {"preds": torch.tensor([11, 13, 10]), "extra": torch.zeros(3, 2)})]
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D, "gather_objects", lambda obj: shards)
    out = gather_eval(shards[0][1], shards[0][0])
    assert out["preds"].tolist() == [10, 11, 12, 13, 14]
    assert out["extra"][:, 0].tolist() == [1, 0, 1, 0, 1]


def test_trainer_configs_and_device_checks(make_cfg):
    ddp = make_cfg(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]).trainer
    assert (ddp.strategy, ddp.devices, ddp.num_nodes) == ("ddp", 2, 1)
    check_trainer_devices(ddp)
    gpu = make_cfg(["trainer=gpu"]).trainer
    assert (gpu.accelerator, gpu.devices, gpu.precision) == ("gpu", 1, "32-true")
    if not torch.cuda.is_available():
        with pytest.raises(LowbitConfigError, match=r"^trainer.accelerator=gpu needs a CUDA GPU, but none is visible"):
            check_trainer_devices(gpu)
    with pytest.raises(LowbitConfigError, match="trainer.strategy=ddp_spawn is not supported"):
        check_trainer_devices({**ddp, "strategy": "ddp_spawn"})
    with pytest.raises(LowbitConfigError, match="trainer.devices must be positive"):
        check_trainer_devices({**ddp, "devices": 0})


def test_ddp_in_a_local_multirun_is_one_line(make_cfg, monkeypatch):
    """Lightning starts the other ranks by re-running the command line, which in a sweep is the whole sweep."""
    import lowbit.distributed as D

    ddp = make_cfg(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]).trainer
    for var in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(D, "_in_multirun", lambda: True)
    with pytest.raises(LowbitConfigError, match="in a multirun: .*hydra/launcher=submitit_slurm"):
        check_trainer_devices(ddp)
    check_trainer_devices({**ddp, "devices": 1})  # one process: nothing to launch
    monkeypatch.setenv("SLURM_NTASKS", "2")  # a Slurm job's tasks are the ranks
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    check_trainer_devices(ddp)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1")
    with pytest.raises(LowbitConfigError, match=r"runs 1 task\(s\) per node: .*tasks_per_node=2"):
        check_trainer_devices(ddp)


def _hydra_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_submitit_slurm_launcher_composes_with_lowbit_sweeper(tmp_path, monkeypatch):
    """hydra/launcher=submitit_slurm comes from the plugin's config store, composes with lowbit_optuna, and its
    options become the sbatch header submitit would submit (no Slurm here: the script is only rendered)."""
    import submitit
    from omegaconf import OmegaConf

    fake_bin = tmp_path / "bin"  # submitit's Slurm executor looks for srun on PATH before rendering anything
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")

    cfg = _hydra_cfg(["hydra/launcher=submitit_slurm", "hydra/sweeper=lowbit_optuna", "trainer=ddp",
                      "trainer.devices=2", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2",
                      "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=120",
                      "hydra.launcher.cpus_per_task=8", "hydra.launcher.mem_gb=64",
                      f"hydra.sweep.dir={tmp_path}/sweep"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.sweeper._target_.endswith("LowbitOptunaSweeper")
    # the parameters hydra's SlurmLauncher.launch hands submitit (same mapping)
    params = OmegaConf.to_container(launcher, resolve=False)
    params = {k: v for k, v in params.items() if k not in ("_target_", "submitit_folder", "max_num_timeout")}
    params["name"] = "train"
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / "submitit"))
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
            "stderr_to_stdout"}
    executor.update_parameters(**{(k if k in base else f"slurm_{k}"): v for k, v in params.items()})
    text = executor._executor._make_submission_file_text("python -u train.py", "0")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --time=120", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB"):
        assert line in text, text


def test_submitit_local_multirun_two_jobs(tmp_path):
    """A comma multirun through hydra/launcher=submitit_local: both jobs run and write summary.json."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=submitit_local", "model=tiny",
           "quantizer=uniform", "bit_assignment.bits=2,4", "logger=none", "callbacks=none", "trainer.accelerator=cpu",
           "trainer.enable_progress_bar=false", "trainer.max_steps=2", "data.max_train_samples=32",
           "data.max_eval_samples=32", "data.batch_size=16", f"paths.log_dir={tmp_path}/logs",
           f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=5",
           "hydra.launcher.cpus_per_task=1"]
    start = time.perf_counter()
    result = _run(cmd)
    print(f"submitit_local 2-job multirun: {time.perf_counter() - start:.1f}s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summaries = {d: json.loads((sweep / d / "summary.json").read_text()) for d in ("0", "1")}
    assert {s["bit_assignment/bits"] for s in summaries.values()} == {2, 4}
    assert (sweep / ".submitit").is_dir()  # ran through submitit, not the basic launcher
