"""python -m lowbit.bench early_exit on a tiny run: JSON with expected and measured savings per batch size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

RUN = ["model=tiny", "logger=none", "callbacks=default", "trainer.max_epochs=1", "data.max_train_samples=32",
       "data.max_eval_samples=40", "data.batch_size=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
       "early_exit=entropy", "early_exit.offramp_epochs=1"]


def _trained_run(make_cfg, overrides: list[str]) -> Path:
    """A finished tiny early-exit run with its .hydra/config.yaml (what the benchmark reads)."""
    from lowbit.pipeline import train

    cfg = make_cfg(overrides)
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    return run_dir


def test_bench_writes_savings_and_checks_the_runner_against_the_cache(make_cfg, tmp_path):
    from lowbit.bench.early_exit import main
    run_dir = _trained_run(make_cfg, RUN)
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
    # per-layer latency at batch 1; no target given and none in the config: 25/50/75/100% of the full model's median
    lat = result["latency"]
    assert lat["batch"] == 1 and lat["sentences"] == 40 and len(lat["per_layer_ms"]) == 2
    assert all(t > 0 for t in lat["per_layer_ms"]) and lat["full_model_ms"] > 0
    assert lat["cumulative_ms"][0] < lat["cumulative_ms"][1]
    assert lat["targets_ms"] == pytest.approx([f * lat["full_model_ms"] for f in (0.25, 0.5, 0.75, 1.0)])
    # one off-ramp: a sentence leaves at layer 1 (measured) or runs to the head, so the table is always right
    assert result["predictor"]["exact"] == 1.0 and result["predictor"]["train_sentences"] == 32


def test_bench_latency_targets_bound_the_fractions(make_cfg, tmp_path):
    from lowbit.bench.early_exit import main
    run_dir = _trained_run(make_cfg, [*RUN, "early_exit.latency_target_ms=[1e-6]", "early_exit.predictor.table=exit_layer"])
    out = tmp_path / "bench.json"
    result = main([str(run_dir), "--batch", "1", "--rounds", "1", "--max-eval-samples", "40", "--also-tolerances", "",
                   "--out", str(out)])
    lat = result["latency"]
    assert lat["targets_from"] == "early_exit.latency_target_ms" and result["predictor"]["table"] == "exit_layer"
    assert lat["fraction_meeting_target"]["1e-06"] == {"all_layers": 0.0, "early_exit": 0.0, "predicted": 0.0,
                                                       "predicted_stop": 0.0}  # below any layer's time
    result = main([str(run_dir), "--batch", "1", "--rounds", "1", "--max-eval-samples", "40", "--also-tolerances", "",
                   "--latency-target-ms", "1e6", "--predictor-table", "entropy", "--out", str(out)])
    assert result["latency"]["fraction_meeting_target"]["1e+06"] == {"all_layers": 1.0, "early_exit": 1.0,
                                                                     "predicted": 1.0, "predicted_stop": 1.0}
    assert json.loads(out.read_text())["predictor"]["table"] == "entropy"


def test_bench_collects_the_training_entropies_of_a_run_that_lacks_them(make_cfg, tmp_path):
    """``--collect-train N`` on a run whose predictor file is gone: the same entropies the run itself kept."""
    import torch

    from lowbit.algorithms.early_exit.method import PREDICTOR_FILE
    from lowbit.bench.early_exit import main
    run_dir = _trained_run(make_cfg, RUN)
    path = run_dir / "early_exit" / PREDICTOR_FILE
    kept = torch.load(path, weights_only=True)
    path.unlink()
    result = main([str(run_dir), "--batch", "1", "--rounds", "1", "--max-eval-samples", "16", "--also-tolerances", "",
                   "--collect-train", "32", "--out", str(tmp_path / "b.json")])
    collected = torch.load(path, weights_only=True)
    assert torch.equal(collected["train_rows"], kept["train_rows"])
    torch.testing.assert_close(collected["train_entropies"], kept["train_entropies"])
    assert result["predictor"]["train_sentences"] == 32
