"""Bad input fails before training with one clear line naming the option or file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_RUN
from lowbit.errors import LowbitConfigError
from lowbit.pipeline import setup


@pytest.mark.parametrize("overrides,message", [
    (["data.task=sst3"], "unknown GLUE task (data.task) 'sst3'"),
    (["model.name=no_such_model_pkg", "model.source=package"], "model.name='no_such_model_pkg'"),
    (["model=bert_base_uncased", "model.name=/no/such/dir"], "model.name='/no/such/dir' is not a directory"),
    (["model=bert_base_uncased", "model.name=nobody/no-such-model"], "model.name='nobody/no-such-model'"),
    (["quantizer=uniform", "bit_assignment.bits=9"], "bit_assignment.bits must be an integer in [2, 8]"),
    (["quantizer=uniform", "bit_assignment=per_module", "bit_assignment.ffn=1"], "bit_assignment.ffn must be"),
    (["quantizer=uniform", "quantizer.granularity=group", "quantizer.n_groups=5"],
     "quantizer.n_groups=5 does not divide the output axis"),
    (["quantizer=uniform", "quantizer.granularity=blocks"], "quantizer.granularity must be one of"),
    (["quantizer=ternary_twn", "quantizer.activation.mode=percentile"], "quantizer.activation.mode"),
    (["data.local_dir=/no/such/glue"], "data.local_dir='/no/such/glue' is not a directory"),
    (["data.batch_size=0"], "data.batch_size must be a positive integer"),
    (["optim.lr=-1"], "optim.lr must be positive"),
    (["quantizer=ternary_lat", "quantizer.lat_solver=fast"], "quantizer.lat_solver must be alternating or exact"),
    (["quantizer=ternary_lat", "quantizer.lat_iterations=0"], "quantizer.lat_iterations must be a positive integer"),
    (["quantizer=ternary_twn", "quantizer.ternarizer=bwn"], "quantizer.ternarizer must be twn or lat"),
    (["finetune.epochs=-1"], "finetune.epochs must be a non-negative integer"),
    (["model.init_checkpoint=/no/such.ckpt"], "model.init_checkpoint='/no/such.ckpt' not found"),
    (["distillation=ternarybert", "distillation.temperature=0", "finetune.epochs=1"], "distillation.temperature"),
])
def test_bad_config_raises_one_clear_error(overrides, message, make_cfg):
    cfg = make_cfg([*TINY_RUN, *overrides])
    with pytest.raises(LowbitConfigError) as err:
        setup(cfg)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_split_file_names_the_file(tmp_path, make_cfg):
    (tmp_path / "glue" / "sst2").mkdir(parents=True)
    cfg = make_cfg([*TINY_RUN, f"data.local_dir={tmp_path}/glue"])
    with pytest.raises(LowbitConfigError, match=r"data file .*glue/sst2/train.jsonl not found"):
        setup(cfg)


def test_malformed_jsonl_row_names_file_and_line(tmp_path, make_cfg):
    d = tmp_path / "glue" / "sst2"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text('{"sentence": "good", "label": 1, "idx": 0}\n{"sentence": "bad", "label": \n')
    (d / "validation.jsonl").write_text('{"sentence": "fine", "label": 1, "idx": 0}\n')
    cfg = make_cfg([*TINY_RUN, f"data.local_dir={tmp_path}/glue"])
    job = setup(cfg)
    with pytest.raises(LowbitConfigError, match=r"train.jsonl:2: malformed JSON row"):
        job.datamodule.setup("fit")


def test_row_missing_column_names_file_and_line(tmp_path):
    from lowbit.data import read_jsonl

    path = tmp_path / "x.jsonl"
    path.write_text('{"sentence": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    with pytest.raises(LowbitConfigError, match=r"x.jsonl:2: row lacks column\(s\) \['sentence'\]"):
        read_jsonl(path, ("sentence", "label"))


def test_train_py_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "quantizer=uniform", "bit_assignment.bits=1", "logger=none",
         f"paths.log_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    err_lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert err_lines[-1] == ("lowbit: error: bit_assignment.bits must be an integer in [2, 8] or null, got 1")
    assert "Traceback" not in result.stderr


def test_unknown_group_option_is_hydras_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "quantizer=quaternary"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Could not find 'quantizer/quaternary'" in result.stderr


def test_bad_logger_fails_before_the_finetune_stage_trains(make_cfg):
    from pathlib import Path

    cfg = make_cfg([*TINY_RUN, "logger=wandb", "logger.wandb.mode=cloud", "finetune.epochs=1"])
    with pytest.raises(LowbitConfigError, match="logger.wandb.mode"):
        setup(cfg)
    assert not Path(cfg.paths.output_dir, "finetune").exists()  # nothing trained
