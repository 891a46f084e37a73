"""Each Q-BERT table and sweep runs end to end on the tiny model with a 1-step budget."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_RUN

from lowbit.errors import LowbitConfigError
from lowbit.hessian.analysis import HessianOptions, analyse
from lowbit.tables import TableSpec, run_table

# checkpoints on (quantized rows start from the baseline's best.ckpt), so no fast_dev_run: one step, one val batch
BASE = [o for o in TINY_RUN if not o.startswith(("logger=", "callbacks=", "trainer.fast_dev_run", "data.max_"))] + [
    "logger=none", "~callbacks.progress_bar", "data.max_train_samples=16", "data.max_eval_samples=16",
    "+trainer.limit_train_batches=1", "trainer.max_epochs=1"]
#: tiny matrices are 32 or 64 wide with 4 heads: map MiniLM group counts onto valid ones
TINY_GROUPS = {1: 1, 12: 4, 24: 8, 48: 8, 64: 16, 192: 16, 384: 32}


def tiny_spec(name: str) -> TableSpec:
    spec = TableSpec.load(name)
    for row in spec.rows:
        row.overrides = [re.sub(r"quantizer\.n_groups=(\d+)", lambda m: f"quantizer.n_groups={TINY_GROUPS[int(m[1])]}", o)
                         for o in row.overrides]
    spec.base_overrides = [re.sub(r"quantizer\.n_groups=(\d+)", lambda m: f"quantizer.n_groups={TINY_GROUPS[int(m[1])]}", o)
                           for o in spec.base_overrides] + BASE
    return spec


@pytest.mark.parametrize("name", ["qbert_groups", "qbert_modules"])
def test_table_runs_on_tiny(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    spec = tiny_spec(name)
    results = run_table(spec, [], tmp_path / name, wandb_mode="offline")
    assert [r["row"] for r in results] == [r.name for r in spec.rows]
    assert results[0]["row"] == "baseline" and results[0]["compression"] == 1.0
    assert all(r["compression"] > 1 for r in results[1:])
    lines = (tmp_path / name / f"{name}.md").read_text().splitlines()
    assert len([line for line in lines if line.startswith("| ")]) == len(spec.rows) + 1  # header + rows


@pytest.mark.parametrize("name, rows", [("qbert_sst2", None),  # MNLI: the rows that differ in kind, to stay fast
                                        ("qbert_mnli", ["baseline", "qbert_mp_w23"])])
def test_table1_needs_the_baseline_spectrum_then_resumes(name, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    spec = tiny_spec(name)
    spec.rows = [r for r in spec.rows if rows is None or r.name in rows]
    out = tmp_path / name
    with pytest.raises(LowbitConfigError, match=r"^bit_assignment\.sensitivity_file=.*does not exist"):
        run_table(spec, [], out, wandb_mode="disabled")
    done = {p.parent.name for p in out.glob("*/summary.json")}
    assert "baseline" in done and "qbert_mp_w23" not in done
    # the Hessian command on the baseline (the model as built: the spectrum's values do not matter here)
    data = [o for o in BASE if o.startswith(("model=", "data."))] + [f"data={spec.base_overrides[0].split('=')[1]}"]
    analyse(data, HessianOptions(fraction=0.25, method="lanczos", blocks=["layer"], max_iter=10, wandb_mode="disabled",
                                 out=str(out / "baseline" / "checkpoints" / "best.hessian.json")), tmp_path / "h")
    results = run_table(spec, [], out, wandb_mode="offline")
    assert len(results) == len(spec.rows) and results[0]["compression"] == 1.0
    if rows is not None:
        return
    size = {r: json.loads((out / r / "summary.json").read_text())["model/size_bits"] for r in ("qbert_w3", "qbert_mp_w23", "qbert_w2")}
    # the mixed run says which layer got which bits: 2/3 bits at an average budget of 2.5
    mixed = json.loads((out / "qbert_mp_w23" / "summary.json").read_text())
    assert sorted(mixed["bit_assignment/layer_bits"].split(",")) == ["2", "3"]
    assert mixed["bit_assignment/word_embedding"] == 8
    # 2/3-bit mixed is smaller than uniform 3-bit and larger than uniform 2-bit
    assert size["qbert_w3"] > size["qbert_mp_w23"] > size["qbert_w2"]


@pytest.mark.timeout(300)
def test_mixed_precision_sweep_runs_and_fails_oversized_trials(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "+hparams_search=qbert_mixed_precision",
           "model=tiny", "model.config.num_hidden_layers=6",  # the space assigns 6 layers (MiniLM-L6)
           "logger=none", "callbacks=none", "trainer.max_steps=1", "trainer.accelerator=cpu",
           "trainer.enable_progress_bar=false", "data.max_train_samples=16", "data.max_eval_samples=16",
           "data.batch_size=8", f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failures=50", "hydra.sweeper.study_name=qbert_mp"]
    result = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with sqlite3.connect(tmp_path / "logs" / "sweeps" / "qbert_mp" / "optuna.db") as con:
        states = [s for (s,) in con.execute("select state from trials")]
    # oversized assignments (average above max_average_bits=3) fail as trials; the sweep goes on
    assert states.count("COMPLETE") == 2 and set(states) <= {"COMPLETE", "FAIL"}
