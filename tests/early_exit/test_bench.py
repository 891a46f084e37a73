"""python -m lowbit.bench early_exit on a tiny run: JSON with expected and measured savings per batch size."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from omegaconf import OmegaConf

RUN = ["model=tiny", "logger=none", "callbacks=default", "trainer.max_epochs=1", "data.max_train_samples=32",
       "data.max_eval_samples=40", "data.batch_size=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
       "early_exit=entropy", "early_exit.offramp_epochs=1"]


def test_bench_writes_savings_and_checks_the_runner_against_the_cache(make_cfg, tmp_path):
    from lowbit.bench.early_exit import main
    from lowbit.pipeline import train

    cfg = make_cfg(RUN)
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    out = tmp_path / "bench.json"
    main([str(run_dir), "--batch", "1,8", "--rounds", "1", "--max-eval-samples", "40", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["examples"] == 40 and result["layers"] == 2
    assert result["curve"]["curve_cost_ratio"] > 1.0 and result["curve"]["points"] == 100
    assert 0.0 <= result["expected_saving"] <= 0.5
    assert result["score_loss_points"] <= 1.0 + 1e-9
    for size in ("1", "8"):
        r = result["batch_sizes"][size]
        assert r["predictions_equal_cached_curve"] == 40 and r["exit_layers_equal_cached_curve"] == 40
        assert r["seconds_full"] > 0 and r["seconds_runner"] > 0
        assert abs(r["score_runner"] - result["score_at_threshold"]) < 1e-9
    assert set(result["operating_points"]) == {"main", "tolerance_0.2", "tolerance_3", "tolerance_5"}
