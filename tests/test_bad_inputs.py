"""Every bad input is one line, before training: one table of inputs and the message each gives.

Each row is ``(id, kind, input, expected message fragment)`` (plus the files or environment it
needs). Kinds:

- ``setup`` / ``dry``: training overrides (on top of ``TINY_RUN``) composed in-process and given to
  ``lowbit.pipeline.setup`` / ``lowbit.pipeline.dry_run``: a ``LowbitConfigError`` without newlines;
- ``tables`` / ``export``: ``lowbit.tables.main`` / ``lowbit.export.__main__.main`` in-process:
  ``SystemExit("lowbit: error: <one line>")``;
- ``cli`` (``python train.py``: exit 2, last stderr line ``lowbit: error: ...``), ``sweep``
  (``python train.py -m``: the sweeper's one line, then only Hydra's ``HYDRA_FULL_ERROR`` hint),
  ``tables-cli``, ``export-cli``: subprocesses, started together when this module starts so they
  overlap with the in-process rows.

Nothing may train: ``Trainer.fit`` fails the test if called, and no stage directory or checkpoint
appears. Placeholders in inputs: ``{glue}`` (a GLUE root written from the row's files), ``{tmp}``,
``{text}`` (a text file), ``{empty}``, ``{trunc}`` (a truncated .ckpt), ``{wrong}`` (a checkpoint of
another model), ``{run}`` (a run directory with ``.hydra/config.yaml``), ``{conf}`` (a copy of
``conf/`` with broken table specs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import CONF, ROOT, TINY_RUN, tiny_config
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification

from lowbit.errors import LowbitConfigError

SST2 = {"sst2/train.jsonl": '{"sentence": "good", "label": 1, "idx": 0}\n{"sentence": "bad", "label": 0, "idx": 1}\n',
        "sst2/validation.jsonl": '{"sentence": "fine", "label": 1, "idx": 0}\n'}
STSB = {"stsb/train.jsonl": '{"sentence1": "a", "sentence2": "b", "label": 4.5, "idx": 0}\n',
        "stsb/validation.jsonl": '{"sentence1": "a", "sentence2": "b", "label": 1.0, "idx": 0}\n'}
MNLI_ROW = '{"premise": "p", "hypothesis": "h", "label": 2, "idx": 0}\n'
MNLI = {f"mnli/{s}.jsonl": MNLI_ROW for s in ("train", "validation_matched", "validation_mismatched")}
COLA = {f"cola/{s}.jsonl": '{"sentence": "a b", "label": 1, "idx": 0}\n' for s in ("train", "validation")}
LOCAL = ["data.local_dir={glue}"]


def sst2_train(*lines: str) -> dict[str, str]:
    """SST-2 files whose train.jsonl is one good row and then ``lines`` (the bad one is line 2)."""
    return {**SST2, "sst2/train.jsonl": '{"sentence": "good", "label": 1, "idx": 0}\n' + "".join(lines)}


def R(id, kind, args, fragment, files=None, env=None):
    return pytest.param(kind, args, fragment, files or {}, env or {}, id=id)


ROWS = [
    # -- model -------------------------------------------------------------------------------------------------------
    R("model-unknown-package", "setup", ["model.name=no_such_model_pkg", "model.source=package"],
      "model.name='no_such_model_pkg': package not installed"),
    R("model-missing-dir", "setup", ["model=bert_base_uncased", "model.name=/no/such/dir"],
      "model.name='/no/such/dir' is not a directory"),
    R("model-unknown-hub-id-offline", "setup", ["model=bert_base_uncased", "model.name=nobody/no-such-model"],
      "model.name='nobody/no-such-model'"),
    R("model-bad-source", "setup", ["model.source=local"], "model.source must be one of"),
    R("model-missing-tokenizer", "setup", ["model.tokenizer=/no/such/tok"],
      "model.tokenizer='/no/such/tok' is not a directory"),
    R("model-inconsistent-config", "setup", ["model.config.hidden_size=30"],
      "model.config / model.model_type='bert': The hidden size (30) is not a multiple"),
    # -- checkpoints (model.init_checkpoint) -----------------------------------------------------------------------
    R("init-ckpt-missing", "setup", ["model.init_checkpoint=/no/such.ckpt"],
      "model.init_checkpoint='/no/such.ckpt' not found"),
    R("init-ckpt-text-file", "setup", ["model.init_checkpoint={text}"], "is not a PyTorch checkpoint (a text file?"),
    R("init-ckpt-truncated", "setup", ["model.init_checkpoint={trunc}"], "is truncated or corrupt"),
    R("init-ckpt-empty", "setup", ["model.init_checkpoint={empty}"], "is empty"),
    R("init-ckpt-wrong-model", "setup", ["model.init_checkpoint={wrong}"], "shape mismatch for"),
    R("init-ckpt-text-file-dry-run", "dry", ["model.init_checkpoint={text}"], "is not a PyTorch checkpoint"),
    R("resume-ckpt-missing", "setup", ["ckpt_path=/no/such.ckpt"], "/no/such.ckpt"),
    R("resume-ckpt-text-file", "setup", ["ckpt_path={text}"], "ckpt_path='{text}' is not a PyTorch checkpoint"),
    R("resume-ckpt-truncated", "setup", ["ckpt_path={trunc}"], "ckpt_path='{trunc}' is truncated or corrupt"),
    R("resume-ckpt-carries-code", "setup", ["ckpt_path={code}"], "ckpt_path='{code}' cannot be loaded as weights"),
    # -- method groups: quantizer, bit_assignment, pruning, distillation ---------------------------------------------
    R("bits-out-of-range", "setup", ["quantizer=uniform", "bit_assignment.bits=9"],
      "bit_assignment.bits must be an integer in [2, 8]"),
    R("per-module-bits", "setup", ["quantizer=uniform", "bit_assignment=per_module", "bit_assignment.ffn=1"],
      "bit_assignment.ffn must be"),
    R("groups-do-not-divide", "setup", ["quantizer=uniform", "quantizer.granularity=group", "quantizer.n_groups=5"],
      "quantizer.n_groups=5 does not divide the output axis"),
    R("granularity-unknown", "setup", ["quantizer=uniform", "quantizer.granularity=blocks"],
      "quantizer.granularity must be one of"),
    R("activation-mode-unknown", "setup", ["quantizer=ternary_twn", "quantizer.activation.mode=percentile"],
      "quantizer.activation.mode"),
    R("activation-bits-not-a-number", "setup", ["quantizer=uniform", "quantizer.activation.bits=abc"],
      "quantizer.activation.bits must be an integer in [2, 16], got 'abc'"),
    R("lat-solver-unknown", "setup", ["quantizer=ternary_lat", "quantizer.lat_solver=fast"],
      "quantizer.lat_solver must be alternating or exact"),
    R("lat-iterations-zero", "setup", ["quantizer=ternary_lat", "quantizer.lat_iterations=0"],
      "quantizer.lat_iterations must be a positive integer"),
    R("quantizer-target-typo", "setup", ["quantizer._target_=lowbit.quant.UniformRecipie"],
      "quantizer._target_='lowbit.quant.UniformRecipie' cannot be imported: module 'lowbit.quant' has no attribute"),
    R("ternarizer-unknown", "setup", ["quantizer=ternary_twn", "quantizer.ternarizer=bwn"],
      "quantizer.ternarizer must be twn or lat"),
    R("approximation-op-unknown", "setup", ["approximation=ibert", "approximation.softmax=fast"],
      "approximation.softmax must be one of ['exact', 'ibert'], got 'fast'"),
    R("approximation-gelu-on-relu-model", "setup", ["approximation=ibert", "+model.config.hidden_act=relu"],
      "approximation.gelu=ibert replaces GELU, but this model's activation (config.hidden_act) is 'relu'"),
    R("approximation-bits-out-of-range", "setup", ["approximation=ibert", "approximation.layernorm_input_bits=40"],
      "approximation.layernorm_input_bits must be in [2, 32], got 40"),
    R("ibert-softmax-output-twice", "setup", ["quantizer=ibert",
                                               "quantizer.activation.sites=[linear_input,attention_probs]"],
      "quantizer=ibert quantizes the softmax output with quantizer.softmax_output_bits"),
    R("ibert-bias-bits", "setup", ["quantizer=ibert", "quantizer.bias_bits=24"],
      "quantizer.bias_bits must be 16 or 32, got 24"),
    R("ibert-softmax-output-bits", "setup", ["quantizer=ibert", "quantizer.softmax_output_bits=1"],
      "quantizer.softmax_output_bits must be in [2, 16] or null, got 1"),
    R("exit-pooler-bits", "setup", ["early_exit=entropy", "quantizer=uniform", "bit_assignment.exit_pooler=1"],
      "bit_assignment.exit_pooler must be an integer in [2, 8] or null, got 1"),
    R("early-exit-training-unknown", "setup", ["early_exit=entropy", "early_exit.training=both"],
      "early_exit.training must be one of ('two_stage', 'joint'), got 'both'"),
    R("early-exit-no-offramp-epochs", "setup", ["early_exit=entropy", "early_exit.offramp_epochs=0"],
      "early_exit.offramp_epochs must be > 0 with early_exit.training=two_stage"),
    R("early-exit-metric-unknown", "setup", ["early_exit=entropy", "early_exit.metric=auc"],
      "early_exit.metric must be null (the task's main metric) or one of ['acc', 'f1', 'mcc'], got 'auc'"),
    R("early-exit-regression-task", "setup", ["early_exit=entropy", "data=stsb"],
      "early_exit=entropy needs a classification task: the entropy of a regression output (STS-B) is undefined"),
    R("early-exit-predictor-bins", "setup", ["early_exit=entropy", "early_exit.predictor.bins=0"],
      "early_exit.predictor.bins must be an integer >= 1, got 0"),
    R("early-exit-latency-target", "setup", ["early_exit=entropy", "early_exit.latency_target_ms=[0]"],
      "early_exit.latency_target_ms must be a list of positive numbers (ms), got [0]"),
    R("span-max-zero", "setup", ["attention_span=adaptive", "attention_span.max_span=0"],
      "attention_span.max_span must be an integer >= 1 (tokens), got 0"),
    R("span-ramp-over-max", "setup", ["attention_span=adaptive", "attention_span.ramp=600"],
      "attention_span.ramp must be in (0, attention_span.max_span=512] (tokens), got 600"),
    R("span-init-zero", "setup", ["attention_span=adaptive", "attention_span.init=0"],
      "attention_span.init must be in (0, 1] (a fraction of max_span), got 0"),
    R("span-loss-negative", "setup", ["attention_span=adaptive", "attention_span.loss_coeff=-1"],
      "attention_span.loss_coeff must be >= 0, got -1"),
    R("span-lr-zero", "setup", ["attention_span=adaptive", "attention_span.lr=0"],
      "attention_span.lr must be null (the optimizer's) or > 0, got 0"),
    R("span-trim-not-bool", "setup", ["attention_span=adaptive", "attention_span.trim_at_inference=yes"],
      "attention_span.trim_at_inference must be true or false, got 'yes'"),
    R("pruning-sparsity-over-1", "setup", ["pruning=magnitude", "pruning.final_sparsity=1.5"],
      "pruning.final_sparsity must be in [0, 1), got 1.5"),
    R("pruning-schedule-unknown", "setup", ["pruning=magnitude", "pruning.schedule=linear"],
      "pruning.schedule must be one of ('cubic', 'oneshot'), got 'linear'"),
    R("movement-score-lr-zero", "setup", ["pruning=movement", "pruning.score_lr=0"], "pruning.score_lr must be > 0, got 0"),
    R("movement-score-init-unknown", "setup", ["pruning=movement", "pruning.score_init=xavier"],
      "pruning.score_init must be one of ('constant', 'uniform', 'kaiming'), got 'xavier'"),
    R("movement-scope-unknown", "setup", ["pruning=movement", "pruning.scope=per_row"],
      "pruning.scope must be one of ('per_matrix', 'global'), got 'per_row'"),
    R("soft-movement-threshold-one", "setup", ["pruning=soft_movement", "pruning.threshold=1.0"],
      "pruning.threshold must be in (0, 1) (a value of sigmoid(scores)), got 1.0"),
    R("soft-movement-penalty-negative", "setup", ["pruning=soft_movement", "pruning.penalty=-1"],
      "pruning.penalty must be >= 0, got -1"),
    R("distillation-temperature-zero", "setup",
      ["distillation=ternarybert", "distillation.temperature=0", "finetune.epochs=1"], "distillation.temperature"),
    R("distillation-loss-unknown", "setup",
      ["distillation=kd_logits", "distillation.logits_loss=mse2", "finetune.epochs=1"],
      "distillation.logits_loss must be one of ['kl', 'soft_ce'], got 'mse2'"),
    R("distillation-without-teacher", "setup",
      ["+experiment=ternarybert_cola", "model.init_checkpoint=null", "finetune.epochs=0"],
      "distillation needs a fine-tuned teacher"),
    # -- data options ----------------------------------------------------------------------------------------------
    R("task-unknown", "setup", ["data.task=sst3"], "unknown GLUE task (data.task) 'sst3'"),
    R("task-not-chosen-abstract-base", "setup", ["data.task=???"],
      "data.task is not set: choose a task with data=<task>"),
    R("task-not-chosen-dry-run", "dry", ["data.task=???"], "data.task is not set"),
    R("data-local-dir-missing", "setup", ["data.local_dir=/no/such/glue"],
      "data.local_dir='/no/such/glue' is not a directory"),
    R("data-batch-size-zero", "setup", ["data.batch_size=0"], "data.batch_size must be a positive integer"),
    R("data-num-workers-negative", "setup", ["data.num_workers=-1"], "data.num_workers must be a non-negative integer"),
    R("data-group-by-length-not-bool", "setup", ["data.group_by_length=sometimes"],
      "data.group_by_length must be true or false, got 'sometimes'"),
    R("data-length-group-batches-zero", "setup", ["data.length_group_batches=0"],
      "data.length_group_batches must be a positive integer, got 0"),
    R("data-max-train-samples-negative", "setup", ["data.max_train_samples=-5"],
      "data.max_train_samples must be a positive integer or null, got -5"),
    R("data-cache-dir-under-a-file", "setup", ["data.cache_dir={text}/glue"],
      "glue' cannot be created: ", ),
    # -- data files ------------------------------------------------------------------------------------------------
    R("data-file-missing", "setup", LOCAL, "glue/sst2/train.jsonl not found",
      files={"sst2/validation.jsonl": SST2["sst2/validation.jsonl"]}),
    R("data-file-empty", "setup", LOCAL, "glue/sst2/train.jsonl has no rows", files={**SST2, "sst2/train.jsonl": ""}),
    R("data-malformed-json", "setup", LOCAL, "train.jsonl:2: malformed JSON row",
      files=sst2_train('{"sentence": "bad", "label": \n')),
    R("data-row-not-an-object", "setup", LOCAL, "train.jsonl:2: row is not a JSON object, got list",
      files=sst2_train('["bad", 0]\n')),
    R("data-missing-column", "setup", LOCAL, "train.jsonl:2: row lacks column(s) ['sentence']",
      files=sst2_train('{"text": "bad", "label": 0}\n')),
    R("data-text-not-a-string", "setup", LOCAL, "train.jsonl:2: column 'sentence' must be a string, got NoneType",
      files=sst2_train('{"sentence": null, "label": 0}\n')),
    R("data-label-out-of-range", "setup", LOCAL,
      "train.jsonl:2: label must be an integer class id in [0, 2), got 2", files=sst2_train('{"sentence": "x", "label": 2}\n')),
    R("data-label-negative", "setup", LOCAL, "train.jsonl:2: label must be an integer class id in [0, 2), got -1",
      files=sst2_train('{"sentence": "x", "label": -1}\n')),
    R("data-label-string", "setup", LOCAL, "train.jsonl:2: label must be an integer class id in [0, 2), got 'positive'",
      files=sst2_train('{"sentence": "x", "label": "positive"}\n')),
    R("data-label-null", "setup", LOCAL, "train.jsonl:2: label is null", files=sst2_train('{"sentence": "x", "label": null}\n')),
    R("data-label-missing", "setup", LOCAL, "train.jsonl:2: row lacks column(s) ['label']",
      files=sst2_train('{"sentence": "x"}\n')),
    R("data-regression-label-nan", "setup", ["data=stsb", *LOCAL],
      "stsb/validation.jsonl:1: label must be a finite number (regression), got nan",
      files={**STSB, "stsb/validation.jsonl": '{"sentence1": "a", "sentence2": "b", "label": NaN}\n'}),
    R("data-regression-label-string", "setup", ["data=stsb", *LOCAL],
      "stsb/train.jsonl:1: label must be a finite number (regression), got '4.5'",
      files={**STSB, "stsb/train.jsonl": '{"sentence1": "a", "sentence2": "b", "label": "4.5"}\n'}),
    R("data-mnli-mismatched-label-3", "setup", ["data=mnli", *LOCAL],
      "validation_mismatched.jsonl:1: label must be an integer class id in [0, 3), got 3",
      files={**MNLI, "mnli/validation_mismatched.jsonl": MNLI_ROW.replace('"label": 2', '"label": 3')}),
    # -- trainer, optim, seed, finetune ------------------------------------------------------------------------------
    R("trainer-unbounded", "setup", ["trainer.fast_dev_run=false", "trainer.max_epochs=-1", "trainer.max_steps=-1"],
      "trainer.max_epochs=-1 with trainer.max_steps=-1 trains without end"),
    R("trainer-unbounded-dry-run", "dry", ["trainer.fast_dev_run=false", "trainer.max_epochs=-1", "trainer.max_steps=-1"],
      "trains without end"),
    R("trainer-max-epochs-not-a-number", "setup", ["trainer.max_epochs=abc"],
      "trainer.max_epochs must be an integer >= -1 (-1: no limit) or null, got 'abc'"),
    R("trainer-max-steps-not-a-number", "setup", ["trainer.max_steps=abc"], "trainer.max_steps must be an integer >= -1"),
    R("trainer-precision", "setup", ["trainer.precision=7"], "Precision 7 is invalid"),
    R("trainer-devices-zero", "setup", ["trainer.devices=0"], "devices"),
    R("trainer-gradient-clip-not-a-number", "setup", ["trainer.gradient_clip_val=abc"], "`gradient_clip_val` should be"),
    R("optim-lr-not-a-number", "setup", ["optim.lr=abc"], "optim.lr must be a number, got 'abc'"),
    R("optim-lr-negative", "setup", ["optim.lr=-1"], "optim.lr must be positive"),
    R("optim-warmup-over-1", "setup", ["optim.warmup_ratio=1.5"], "optim.warmup_ratio must be in [0, 1), got 1.5"),
    R("optim-optimizer-unknown", "setup", ["optim.optimizer._target_=torch.optim.Nope"],
      "optim.optimizer._target_='torch.optim.Nope' cannot be imported: module 'torch.optim' has no attribute 'Nope'"),
    R("seed-not-a-number", "setup", ["seed=abc"], "seed must be an integer in [0, 4294967295] or null, got 'abc'"),
    R("seed-negative", "setup", ["seed=-1"], "seed must be an integer in [0, 4294967295] or null, got -1"),
    R("finetune-epochs-negative", "setup", ["finetune.epochs=-1"], "finetune.epochs must be a non-negative integer"),
    R("finetune-lr-zero", "setup", ["finetune.epochs=1", "finetune.lr=0"], "finetune.lr must be positive, got 0"),
    # -- metrics, objectives, callbacks, logger ----------------------------------------------------------------------
    R("metric-not-logged-by-task", "setup", ["optimized_metric=val/mcc"],
      "optimized_metric='val/mcc' is not logged: task sst2 logs: val/acc"),
    R("metric-acc-on-cola", "setup", ["data=cola", "optimized_metric=val/acc"],
      "optimized_metric='val/acc' is not logged: task cola logs: val/mcc"),
    R("metric-mnli-lists-both-splits", "setup", ["data=mnli", "optimized_metric=val_m/acc"],
      "task mnli logs: val/acc, val_mm/acc"),
    R("metric-data-default-overridden", "setup", ["data.metric=val/f1"], "optimized_metric (data.metric)='val/f1'"),
    R("metric-bad-interpolation", "setup", ["optimized_metric=${data.nope}"],
      "optimized_metric: Interpolation key 'data.nope' not found"),
    R("metric-mode-unknown", "setup", ["optimized_mode=up"], "optimized_mode must be min or max, got 'up'"),
    R("objectives-unknown-name", "setup", ["objectives=[val/acc,model/size]"],
      "objectives: 'model/size' is not a result of this run"),
    R("objectives-vs-sweep-directions", "setup", ["+hparams_search=bits_lr", "objectives=[val/acc]"],
      "objectives names 1 metric(s) (null: optimized_metric alone) but hydra.sweeper.direction has 2"),
    R("callback-monitor-not-logged", "setup", ["callbacks=default", "callbacks.model_checkpoint.monitor=val/f1"],
      "callbacks.model_checkpoint.monitor='val/f1' is not logged"),
    R("callback-target-typo", "setup",
      ["callbacks=default", "callbacks.progress_bar._target_=pytorch_lightning.callbacks.RichProgresBar"],
      "callbacks.progress_bar._target_='pytorch_lightning.callbacks.RichProgresBar' cannot be imported"),
    R("callback-mode-unknown", "setup", ["callbacks=default", "callbacks.model_checkpoint.mode=up"],
      "`mode` can be min, max but got up"),
    R("text-progress-negative-interval", "setup", ["callbacks=default", "callbacks.text_progress.every_seconds=-1"],
      "callbacks.text_progress.every_seconds must be a number >= 0, got -1"),
    R("logger-unknown-option", "setup", ["logger=csv", "+logger.csv.bogus=1"],
      "CSVLogger.__init__() got an unexpected keyword argument 'bogus'"),
    R("logger-wandb-mode", "setup", ["logger=wandb", "logger.wandb.mode=cloud", "finetune.epochs=1"], "logger.wandb.mode"),
    R("table-spec-as-run-option", "setup", ["+table=qbert_sst2"], "is a paper table spec, not a training option"),
    # -- environment -----------------------------------------------------------------------------------------------
    R("env-data-dir-nowhere", "setup", [], "LOWBIT_DATA_DIR='/no/such/glue' is not a directory",
      env={"LOWBIT_DATA_DIR": "/no/such/glue"}),
    R("env-conf-dir-bad", "setup", [], "LOWBIT_CONF_DIR='/no/such/conf' has no train.yaml",
      env={"LOWBIT_CONF_DIR": "/no/such/conf"}),
    R("env-conf-dir-bad-tables", "tables", ["qbert_sst2"], "LOWBIT_CONF_DIR='/no/such/conf' has no train.yaml",
      env={"LOWBIT_CONF_DIR": "/no/such/conf"}),
    # -- table specs (python -m lowbit.tables) ----------------------------------------------------------------------
    R("table-unknown", "tables", ["nope"], "unknown table 'nope'; known: ["),
    R("table-bad-row-reference", "tables", ["bad_ref"],
      "row 'b': override 'model.init_checkpoint={row:later}/x.ckpt' refers to row 'later' that has not run before it",
      env={"LOWBIT_CONF_DIR": "{conf}"}),
    R("table-duplicate-row-names", "tables", ["dup_rows"], "duplicate row names ['a']", env={"LOWBIT_CONF_DIR": "{conf}"}),
    R("table-unknown-key", "tables", ["unknown_key"], "row 'a': unknown key(s) ['overide']",
      env={"LOWBIT_CONF_DIR": "{conf}"}),
    R("table-not-yaml", "tables", ["not_yaml"], "not_yaml.yaml:4: not valid YAML", env={"LOWBIT_CONF_DIR": "{conf}"}),
    R("table-bad-override", "tables", ["qbert_sst2", "data.bogus=1", "--out", "{tmp}/t"],
      "table qbert_sst2: row baseline: Could not override 'data.bogus'"),
    R("table-row-metric-not-logged", "tables", ["qbert_sst2", "optimized_metric=val/f1", "--out", "{tmp}/t"],
      "table qbert_sst2: row baseline: optimized_metric='val/f1' is not logged"),
    # -- export input (python -m lowbit.export) ------------------------------------------------------------------
    R("export-ckpt-missing", "export", ["{run}/checkpoints/none.ckpt", "{tmp}/out"], "checkpoints/none.ckpt not found"),
    R("export-ckpt-text-file", "export", ["{text}", "{tmp}/out"], "is not a PyTorch checkpoint"),
    R("export-ckpt-truncated", "export", ["{trunc}", "{tmp}/out", "--config", "{run}/.hydra/config.yaml"],
      "is truncated or corrupt"),
    R("export-ckpt-wrong-model", "export", ["{run}/checkpoints/wrong.ckpt", "{tmp}/out"],
      "does not fit the run's model (size mismatch for"),
    R("export-run-config-missing", "export", ["{wrong}", "{tmp}/out"], ".hydra/config.yaml not found (pass --config)"),
    # -- subprocesses: the CLI contracts ---------------------------------------------------------------------------
    R("cli-exit-2", "cli", ["quantizer=uniform", "bit_assignment.bits=1"],
      "bit_assignment.bits must be an integer in [2, 8] or null, got 1"),
    R("sweep-bad-params-expression", "sweep", ["+hparams_search=bits_lr", "+hydra.sweeper.params.x='interval(0,'"],
      "hydra.sweeper.params.x: cannot use 'x=interval(0,' as a search-space entry"),
    R("tables-cli-bad-override", "tables-cli", ["qbert_sst2", "data.bogus=1", "--out", "{tmp}/t"],
      "Could not override 'data.bogus'"),
    R("export-cli-text-file", "export-cli", ["{text}", "{tmp}/out"], "is not a PyTorch checkpoint"),
]

SUBPROCESS_KINDS = ("cli", "sweep", "tables-cli", "export-cli")
TABLES = {
    "bad_ref": """name: bad_ref\ntitle: t\nmetrics: [val/acc]\nrows:\n  - {name: a, overrides: []}\n"""
               """  - {name: b, overrides: ["model.init_checkpoint={row:later}/x.ckpt"]}\n"""
               """  - {name: later, overrides: []}\n""",
    "dup_rows": """name: dup_rows\ntitle: t\nmetrics: [val/acc]\nrows:\n  - {name: a, overrides: []}\n"""
                """  - {name: a, overrides: [quantizer=uniform]}\n""",
    "unknown_key": """name: unknown_key\ntitle: t\nmetrics: [val/acc]\nrows:\n  - {name: a, overide: [quantizer=none]}\n""",
    "not_yaml": """name: not_yaml\ntitle: t\nmetrics: [val/acc\nrows: []\n""",
}


class _RunsCode:
    """Pickles as a call to ``os.system`` (what a crafted checkpoint does): a weights-only load refuses it."""

    def __reduce__(self):
        import os

        return os.system, ("touch /tmp/lowbit_resume_ran_code",)


def _tiny_state(hidden: int = 32) -> dict[str, torch.Tensor]:
    cfg = tiny_config("bert")
    cfg.hidden_size, cfg.intermediate_size = hidden, 2 * hidden
    return {f"model.{k}": v for k, v in AutoModelForSequenceClassification.from_config(cfg).state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The placeholder files, made once: bad checkpoints, a run directory, a conf/ with broken tables."""
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "notes.txt").write_text("this is a text file, not a checkpoint\n")
    (d / "empty.ckpt").write_bytes(b"")
    torch.save({"state_dict": _tiny_state()}, d / "good.ckpt")
    data = (d / "good.ckpt").read_bytes()
    (d / "trunc.ckpt").write_bytes(data[: len(data) // 2])
    torch.save({"state_dict": _tiny_state(hidden=16)}, d / "wrong.ckpt")
    torch.save({"state_dict": {}, "loops": _RunsCode()}, d / "code.ckpt")  # resuming it must not run its code
    run = d / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    from conftest import compose_train

    OmegaConf.save(compose_train([*TINY_RUN], d / "composed"), run / ".hydra" / "config.yaml")
    shutil.copy(d / "wrong.ckpt", run / "checkpoints" / "wrong.ckpt")
    for rel, text in {**SST2, **STSB, **MNLI, **COLA}.items():  # small GLUE files: setup reads every split it uses
        (d / "glue" / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / "glue" / rel).write_text(text)
    conf = d / "conf"
    shutil.copytree(CONF, conf)
    for name, text in TABLES.items():
        (conf / "table" / f"{name}.yaml").write_text(text)
    return {"text": str(d / "notes.txt"), "empty": str(d / "empty.ckpt"), "trunc": str(d / "trunc.ckpt"),
            "code": str(d / "code.ckpt"),
            "wrong": str(d / "wrong.ckpt"), "run": str(run), "conf": str(conf), "small_glue": str(d / "glue")}


def _fill(value: str, subs: dict[str, str]) -> str:
    for key, sub in subs.items():
        value = value.replace("{" + key + "}", sub)
    return value


def _command(kind: str, args: list[str]) -> list[str]:
    if kind in ("cli", "sweep"):
        return [sys.executable, str(ROOT / "train.py"), *(["-m"] if kind == "sweep" else []), "logger=none",
                "model=tiny", *args]
    module = {"tables-cli": "lowbit.tables", "export-cli": "lowbit.export"}[kind]
    return [sys.executable, "-m", module, *args]


@pytest.fixture(scope="module")
def background(files, tmp_path_factory):
    """The subprocess rows, all started at once (each pays seconds of imports): id -> (Popen, its tmp dir)."""
    procs = {}
    for param in ROWS:
        kind, args, _, _, env = param.values
        if kind not in SUBPROCESS_KINDS:
            continue
        tmp = tmp_path_factory.mktemp("cli")
        subs = {**files, "tmp": str(tmp)}
        cmd = _command(kind, [_fill(a, subs) for a in args])
        if kind in ("cli", "sweep"):
            cmd += [f"paths.log_dir={tmp}/logs", f"paths.cache_dir={tmp}/cache"]
        proc_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
                    **{k: _fill(v, subs) for k, v in env.items()}}
        procs[param.id] = (subprocess.Popen(cmd, cwd=ROOT, env=proc_env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True), tmp)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(autouse=True)
def _small_glue_and_subprocesses_first(background, files, monkeypatch):
    """Every row asks for ``background``, so the subprocesses start with the first row and overlap the rest.
    ``LOWBIT_DATA_DIR`` is a few-row GLUE copy: ``setup`` reads and checks every split before training, and
    the real SST-2 train split (67k rows) would cost each row half a second."""
    monkeypatch.setenv("LOWBIT_DATA_DIR", files["small_glue"])


@pytest.fixture
def no_training(monkeypatch):
    def fit(*args, **kwargs):
        pytest.fail("Trainer.fit was called: the bad input was not caught before training")

    monkeypatch.setattr(pl.Trainer, "fit", fit)


def _assert_one_line(message: str, fragment: str) -> None:
    assert fragment in message, f"expected {fragment!r} in {message!r}"
    assert "\n" not in message and "Traceback" not in message, message


def _assert_nothing_trained(root: Path) -> None:
    ckpts = list(root.rglob("*.ckpt"))
    assert not ckpts, f"checkpoints written: {ckpts}"
    assert not list(root.rglob("finetune")), "a finetune stage ran"
    assert not list(root.rglob("optuna.db")), "a sweep study was opened"


@pytest.mark.parametrize("kind,args,fragment,file_texts,env", ROWS)
def test_bad_input_is_one_line_before_training(kind, args, fragment, file_texts, env, files, background, make_cfg,
                                               tmp_path, monkeypatch, no_training, request):
    subs = {**files, "tmp": str(tmp_path), "glue": str(tmp_path / "glue")}
    for rel, text in file_texts.items():
        path = tmp_path / "glue" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for key, value in env.items():
        monkeypatch.setenv(key, _fill(value, subs))
    args = [_fill(a, subs) for a in args]
    fragment = _fill(fragment, subs)

    if kind in ("setup", "dry"):
        from lowbit.pipeline import dry_run, setup

        cfg = make_cfg([*TINY_RUN, *args])
        with pytest.raises(LowbitConfigError) as err:
            (setup if kind == "setup" else dry_run)(cfg)
        _assert_one_line(str(err.value), fragment)
        _assert_nothing_trained(tmp_path)
    elif kind in ("tables", "export"):
        if kind == "tables":
            from lowbit.tables import main
        else:
            from lowbit.export.__main__ import main
        with pytest.raises(SystemExit) as err:
            main(args)
        message = str(err.value.code)
        assert message.startswith("lowbit: error: "), message
        _assert_one_line(message, fragment)
        _assert_nothing_trained(tmp_path)
    else:
        proc, tmp = background[request.node.callspec.id]
        _, stderr = proc.communicate(timeout=240)
        assert "Traceback" not in stderr, stderr
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        if kind == "sweep":  # Hydra prints the sweeper's error, then only its hint line
            assert proc.returncode == 1, stderr
            assert [ln for ln in lines if "HYDRA_FULL_ERROR" not in ln] == [lines[0]], stderr
            _assert_one_line(lines[0], fragment)
        else:
            assert proc.returncode == (2 if kind == "cli" else 1), stderr
            assert lines[-1].startswith("lowbit: error: "), stderr
            _assert_one_line(lines[-1], fragment)
        _assert_nothing_trained(tmp)


def test_the_table_has_at_least_40_bad_inputs():
    assert len(ROWS) >= 40 and len({p.id for p in ROWS}) == len(ROWS)


# -- not errors any more, or not lowbit's own line ------------------------------------------------------------------
@pytest.mark.parametrize("task", ["sst2", "mnli", "qnli", "qqp", "mrpc", "stsb", "cola", "rte"])
def test_every_task_brings_its_default_metric(task, make_cfg):
    """``python train.py data=cola`` (README) used to fail after epoch 1 on val/acc; each task now sets its metric."""
    from lowbit.data import GLUE_TASKS
    from lowbit.validate import validate_run_config

    cfg = make_cfg([*TINY_RUN, f"data={task}"])
    validate_run_config(cfg)
    assert cfg.optimized_metric == GLUE_TASKS.get(task).default_metric
    assert cfg.optimized_metric in GLUE_TASKS.get(task).logged_metrics()


def test_data_options_offer_no_abstract_base():
    """``--help`` lists every yaml of conf/data: only real tasks are there (the shared keys live in conf/_glue_data.yaml)."""
    from lowbit.data import GLUE_TASKS

    assert {p.stem for p in (CONF / "data").glob("*.yaml")} <= set(GLUE_TASKS)
    assert not list((CONF / "data").rglob("_*.yaml"))


def test_disabled_progress_bar_with_default_callbacks_works(make_cfg, no_training):
    from pytorch_lightning.callbacks.progress import ProgressBar

    from lowbit.pipeline import setup

    job = setup(make_cfg([*TINY_RUN, "callbacks=default", "trainer.enable_progress_bar=false"]))
    assert not any(isinstance(cb, ProgressBar) for cb in job.trainer.callbacks)


def _options(group: str) -> str:
    """The options Hydra lists for a config group (every conf/<group>/*.yaml but the private ``_*`` ones)."""
    return ", ".join(sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml") if not p.stem.startswith("_")))


COMPOSITION_ERRORS = {
    "data=_glue": f"lowbit: error: Could not find 'data/_glue' (available options in 'data': {_options('data')})",
    "quantizer=quaternary": "lowbit: error: Could not find 'quantizer/quaternary' (available options in 'quantizer': "
                            f"{_options('quantizer')})",
    "data.bogus=1": "lowbit: error: Could not override 'data.bogus'. To append to your config use +data.bogus=1",
    "+experiment=nope": "lowbit: error: Could not find 'experiment/nope' (available options in 'experiment': "
                        f"{_options('experiment')})",
}


@pytest.fixture(scope="module")
def composition_runs(tmp_path_factory):
    """``python train.py <override>`` for every COMPOSITION_ERRORS row, started together (each is seconds of imports)."""
    tmp = tmp_path_factory.mktemp("composition")
    procs = {o: subprocess.Popen([sys.executable, str(ROOT / "train.py"), o, "logger=none",
                                  f"hydra.run.dir={tmp}/{i}"], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i, o in enumerate(COMPOSITION_ERRORS)}
    out = {o: (p.wait(timeout=180), p.stderr.read()) for o, p in procs.items()}
    return tmp, out


@pytest.mark.parametrize("override", sorted(COMPOSITION_ERRORS))
def test_composition_errors_are_one_line_from_train_py(override, composition_runs):
    """``train.py`` composes a single run once before Hydra does (``lowbit.cli.preflight``): a composition error
    (an unknown option, a key that does not exist) is one line and exit code 2, not Hydra's report."""
    tmp, out = composition_runs
    returncode, stderr = out[override]
    assert returncode == 2
    assert [ln for ln in stderr.splitlines() if ln.strip()] == [COMPOSITION_ERRORS[override]]
    assert not any(tmp.iterdir())  # nothing ran: no run directory was made
