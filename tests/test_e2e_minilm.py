"""End-to-end on the real pretrained MiniLM-L6 (slow; still run by `make test` in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_ternarybert_mnli_two_steps_on_local_subset(tmp_path):
    if not os.environ.get("LOWBIT_DATA_DIR"):
        pytest.skip("needs the local GLUE copy (../shared/data/glue or LOWBIT_DATA_DIR)")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "+experiment=ternarybert_mnli", "data.max_train_samples=32",
         "data.max_eval_samples=32", "data.batch_size=16", "data.max_length=64", "trainer.max_steps=2", "logger=none", f"hydra.run.dir={out}",
         f"paths.cache_dir={tmp_path}/cache", "trainer.enable_progress_bar=false", "~callbacks.progress_bar"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["val/acc"] <= 1 and 0 <= summary["val_mm/acc"] <= 1
    # ternary encoder + ternary word embeddings at 1.6 bits (5 trits/byte), float positions/LayerNorm/biases/head
    assert 15 < summary["model/compression"] < 18
    assert "finetune/val/acc" in summary  # the experiment fine-tunes its teacher first
    assert (out / "checkpoints" / "last.ckpt").exists()


def test_qat_step_benchmark_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    from lowbit.bench.qat_step import main

    main(["--steps", "1", "--warmup", "0", "--batch-size", "4", "--seq-len", "16", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["median_s"]) == {"fp32", "ternary_w2e2a8"}
    assert result["ratio_qat_over_fp32"] == pytest.approx(result["median_s"]["ternary_w2e2a8"] / result["median_s"]["fp32"])
