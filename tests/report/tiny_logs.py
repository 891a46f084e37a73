"""A small ``logs/`` tree made the way lowbit makes it, on the tiny model (seconds on a CPU), for report tests:

- ``tables/qbert_sst2/``: four rows of Q-BERT Table 1 run by ``lowbit.tables.run_table`` (the conf spec's rows and
  paper numbers; 4 groups instead of 64, the tiny model being 32 wide): fp32 ``baseline``, ``directq_w2``,
  ``qbert_w2`` and the mixed-precision ``qbert_mp_w23``, whose bits come from the Hessian spectrum of the baseline's
  checkpoint (``python -m lowbit.hessian``'s ``analyse``) written beside it. Rows log to W&B offline (the default
  logger), so their curves come from the ``.wandb`` files;
- ``runs/ternary_csv`` (SST-2) and ``runs/fp32_mrpc`` (MRPC): single runs with ``logger=csv`` (``metrics.csv``),
  each with ``.hydra/config.yaml`` as ``train.py`` leaves it;
- ``sweeps/tiny_bits_lr/``: a real 3-trial ``lowbit_optuna`` sweep (``python train.py -m +hparams_search=bits_lr``,
  run in this process), its study in ``optuna.db``.
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from wandb_records import finished_records

QBERT_ROWS = ("baseline", "directq_w2", "qbert_w2", "qbert_mp_w23")
TABLE = "qbert_sst2"
STUDY = "tiny_bits_lr"
#: the tiny-model budget of every run (as TINY_RUN, with checkpoints and a few logged steps)
TINY = ["model=tiny", "data.max_train_samples=16", "data.max_eval_samples=16", "data.batch_size=8",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1"]


@dataclass
class TinyLogs:
    root: Path                # the logs directory
    table_dir: Path           # logs/tables/qbert_sst2
    table_rows: list[dict]    # what run_table returned (the CSV's rows)
    csv_run: Path             # logs/runs/ternary_csv (SST-2, ternary, logger=csv)
    mrpc_run: Path            # logs/runs/fp32_mrpc
    sweep_dir: Path           # logs/sweeps/tiny_bits_lr


def _tiny_qbert_spec():
    """conf/table/qbert_sst2.yaml with four of its rows, as the tiny model can run them."""
    from lowbit.tables import TableSpec

    spec = TableSpec.load(TABLE)
    rows = []
    for row in spec.rows:
        if row.name in QBERT_ROWS:
            overrides = ["quantizer.n_groups=4" if o.startswith("quantizer.n_groups=") else o for o in row.overrides]
            rows.append(dataclasses.replace(row, overrides=overrides))
    return dataclasses.replace(spec, rows=rows)


def _run_table(spec, rows: list[str], out: Path, cache: Path) -> list[dict]:
    from lowbit.tables import run_table

    extra = [*TINY, "logger.wandb.mode=offline", f"paths.cache_dir={cache}"]
    return run_table(dataclasses.replace(spec, rows=[r for r in spec.rows if r.name in rows]), extra, out,
                     wandb_mode="offline")


def _baseline_hessian(table_dir: Path, cache: Path) -> Path:
    """``python -m lowbit.hessian`` on the baseline row's best checkpoint: ``best.hessian.json`` beside it."""
    from lowbit.hessian.analysis import HessianOptions, analyse

    ckpt = table_dir / "baseline" / "checkpoints" / "best.ckpt"
    opts = HessianOptions(checkpoint=str(ckpt), fraction=1.0, max_batches=1, method="lanczos", max_iter=4,
                          blocks=["layer"], summed=False, wandb_mode="disabled")
    analyse(["data=sst2", *TINY, f"paths.cache_dir={cache}"], opts, output_dir=table_dir / "hessian")
    return ckpt.with_suffix(".hessian.json")


def _single_run(name: str, overrides: list[str], logs: Path, cache: Path) -> Path:
    import yaml
    from omegaconf import OmegaConf

    from lowbit.compose import compose_train
    from lowbit.pipeline import train

    run_dir = logs / "runs" / name
    cfg = compose_train([*TINY, "logger=csv", "callbacks=none", "trainer.max_steps=3", *overrides], run_dir,
                        log_dir=logs, cache_dir=cache)
    train(cfg)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)  # as train.py (Hydra) leaves it
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    return run_dir


def _sweep(logs: Path, cache: Path, repo: Path) -> Path:
    """``python train.py -m +experiment=demo_sst2 +hparams_search=bits_lr`` on the tiny model, in this process."""
    from hydra.core.global_hydra import GlobalHydra

    argv = ["train.py", "-m", "+experiment=demo_sst2", "+hparams_search=bits_lr", "model=tiny", "logger=none",
            "callbacks=none", "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "data.max_train_samples=16", "data.max_eval_samples=16", "data.batch_size=8", f"paths.log_dir={logs}",
            f"paths.cache_dir={cache}", "hydra.sweeper.n_trials=3", f"hydra.sweeper.study_name={STUDY}"]
    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        mp.chdir(repo)
        runpy.run_path(str(repo / "train.py"), run_name="__main__")
    GlobalHydra.instance().clear()
    return logs / "sweeps" / STUDY


def make_tiny_logs(tmp: Path, repo: Path) -> TinyLogs:
    logs, cache = tmp / "logs", tmp / "cache"
    table_dir = logs / "tables" / TABLE
    spec = _tiny_qbert_spec()
    _run_table(spec, list(QBERT_ROWS[:3]), table_dir, cache)  # the MP row needs the baseline's spectrum first
    _baseline_hessian(table_dir, cache)
    rows = _run_table(spec, list(QBERT_ROWS), table_dir, cache)  # resumes: only the MP row trains
    csv_run = _single_run("ternary_csv", ["data=sst2", "quantizer=ternary_twn", "bit_assignment.bits=2"], logs, cache)
    mrpc_run = _single_run("fp32_mrpc", ["data=mrpc", "quantizer=none"], logs, cache)
    sweep_dir = _sweep(logs, cache, repo)
    for wandb_file in logs.rglob("run-*.wandb"):  # W&B's service may still be writing a finished run's tail
        finished_records(wandb_file)
    return TinyLogs(logs, table_dir, rows, csv_run, mrpc_run, sweep_dir)
