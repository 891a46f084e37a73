"""python -m lowbit.bench export_size: the default setting, chosen methods (masks + AdaptivFloat), a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_RUN
from omegaconf import OmegaConf

from lowbit.bench.export_size import main

EDGEBERT = ["quantizer=adaptivfloat", "bit_assignment.bits=8", "pruning=magnitude", "pruning.schedule=oneshot",
            "pruning.final_sparsity=0.9", "pruning.embedding_sparsity=0.6"]


def test_default_is_ternarybert_2_2_8(tmp_path):
    result = main(["--model", "tiny", "--out", str(tmp_path / "r.json")])
    assert result["setting"] == "TernaryBERT 2-2-8" and result["paper_ratio"] == 14.9
    assert result["value_kinds"] == {"ternary": 14} and result["formats"] == {"dense": 14}
    assert result["ratio"] == result["fp32_safetensors_bytes"] / result["packed_bytes"]
    assert json.loads((tmp_path / "r.json").read_text()) == result


def test_masks_and_adaptivfloat_weights_on_random_weights(tmp_path):
    result = main(["--model", "tiny", "--overrides", *EDGEBERT, "--setting", "edgebert", "--out",
                   str(tmp_path / "r.json")])
    assert result["setting"] == "edgebert" and "paper_ratio" not in result
    assert result["value_kinds"] == {"adaptivfloat": 14}  # 12 encoder Linears, pooler, word embedding
    # 90% of each 32x32 encoder matrix pruned: survivors + a delta index; 60% of the embedding
    assert result["formats"]["delta"] >= 12 and len(result["layers_sparse"]) == 13
    encoder = {n: s for n, s in result["layers_sparse"].items() if ".encoder." in n}
    assert all(s["kept"] == pytest.approx(0.1 * s["numel"], abs=1) for s in encoder.values())
    dense = main(["--model", "tiny", "--overrides", *EDGEBERT[:2], "--out", str(tmp_path / "d.json")])
    assert result["packed_bytes"] < dense["packed_bytes"] < dense["fp32_safetensors_bytes"]
    assert dense["fp32_safetensors_bytes"] == result["fp32_safetensors_bytes"]


def test_a_trained_run(make_cfg, tmp_path):
    from lowbit.pipeline import train

    overrides = [o for o in TINY_RUN if o not in ("callbacks=none", "trainer.fast_dev_run=true")] + [
        "callbacks=default", "~callbacks.progress_bar", "trainer.max_steps=2", "+trainer.limit_val_batches=1",
        *EDGEBERT]
    cfg = make_cfg(overrides)
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    result = main(["--run", str(run_dir), "--out", str(tmp_path / "r.json")])
    assert result["reload_max_abs_logit_diff"] == 0.0
    assert result["value_kinds"] == {"adaptivfloat": 14} and result["formats"]["delta"] >= 12
    assert result["ratio"] > 2.0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    masks = {k for k in ckpt["state_dict"] if k.endswith(".mask")}
    assert len(masks) == 13
    with pytest.raises(SystemExit) as err:
        main(["--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")])
    assert str(err.value.code).startswith("lowbit: error: checkpoint") and "\n" not in str(err.value.code)
