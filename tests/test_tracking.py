"""W&B without an API key runs offline, with the full config and the final summary."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY_RUN
from lowbit.pipeline import run
from lowbit.tracking import wandb_logger


def test_wandb_offline_run_has_full_config_and_summary(make_cfg, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    overrides = [o for o in TINY_RUN if not o.startswith("logger=")] + ["logger=wandb", "+experiment=demo_sst2"]
    cfg = make_cfg(overrides)
    run(cfg)
    out = capsys.readouterr().out
    assert "W&B offline run written to" in out
    runs = list(Path(cfg.paths.output_dir, "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # wandb >= 0.2x keeps config and summary in the run's binary .wandb log (protobuf records, strings stored
    # raw), which is what `wandb sync` uploads
    record = next(runs[0].glob("*.wandb")).read_bytes()
    for key in ("approximation", "pruning", "early_exit", "distillation", "bit_assignment", "optim",
                "lowbit.algorithms.ternarybert.TernaryRecipe", "tiny-bert",
                "model/size_bits", "model/compression", "val/acc"):
        assert key.encode() in record, key


def test_wandb_bad_mode_names_option(tmp_path):
    import pytest

    from lowbit.errors import LowbitConfigError

    with pytest.raises(LowbitConfigError, match="logger.wandb.mode"):
        wandb_logger(save_dir=str(tmp_path), mode="cloud")
