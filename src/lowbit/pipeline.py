"""Build and run one training job from a composed Hydra config.

Everything is instantiated and validated (data files, model, every method option)
before the first training step, so bad input fails in seconds with one line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lowbit.data.glue import GLUEDataModule
from lowbit.errors import LowbitConfigError, check
from lowbit.methods import METHOD_ORDER, Method, QuantizationMethod
from lowbit.models import ModelSpec
from lowbit.module import CompressionModule
from lowbit.tracking import write_summary

log = logging.getLogger(__name__)


def build(cfg_node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces lowbit's own one-line errors unwrapped."""
    try:
        return instantiate(cfg_node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, LowbitConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        target = getattr(cfg_node, "_target_", None) or "config"
        detail = e.__cause__ if e.__cause__ is not None else e
        lines = str(detail).strip().splitlines()
        raise LowbitConfigError(f"{target}: {type(detail).__name__}: {lines[0] if lines else ''}") from None


def build_methods(cfg: DictConfig) -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for group in METHOD_ORDER:
        if group == "quantizer":
            methods[group] = QuantizationMethod(build(cfg.quantizer), build(cfg.bit_assignment))
        else:
            method = build(cfg[group])
            check(isinstance(method, Method), f"{group}: _target_ must build a lowbit.methods.Method")
            methods[group] = method
    return methods


@dataclass
class Job:
    cfg: DictConfig
    datamodule: GLUEDataModule
    module: CompressionModule
    trainer: pl.Trainer
    methods: dict[str, Method]
    loggers: list = field(default_factory=list)
    finetune_metrics: dict[str, float] = field(default_factory=dict)


def setup(cfg: DictConfig) -> Job:
    check(cfg.get("optimized_metric") is not None, "optimized_metric must be set")
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    model_spec: ModelSpec = build(cfg.model)
    tokenizer = model_spec.load_tokenizer()
    datamodule: GLUEDataModule = build(cfg.data, tokenizer=tokenizer)
    datamodule.check_sources()
    methods = build_methods(cfg)
    model = model_spec.build(datamodule.task.num_labels)
    finetune = cfg.get("finetune") or {}
    epochs = finetune.get("epochs", 0)
    check(isinstance(epochs, int) and epochs >= 0, f"finetune.epochs must be a non-negative integer, got {epochs!r}")
    for method in methods.values():
        method.check_ready(has_finetuned_weights=bool(model_spec.init_checkpoint or epochs))
    # everything is instantiated (and so validated) before the first training step of any stage
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [cb for m in methods.values() for cb in m.callbacks()]
    loggers = [build(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    finetune_metrics = finetune_float(model, datamodule, cfg, epochs, finetune.lr) if epochs else {}
    for group in METHOD_ORDER:
        model = methods[group].prepare(model) or model
    # from_pretrained returns eval mode and Lightning keeps module modes: without this, dropout is off
    model.train()
    module = CompressionModule(model, datamodule.task, list(methods.values()), **cfg.optim)
    return Job(cfg, datamodule, module, trainer, methods, loggers, finetune_metrics)


def finetune_float(model, datamodule: GLUEDataModule, cfg: DictConfig, epochs: int, lr: float) -> dict[str, float]:
    """Stage 0: fine-tune the float model in place; returns its best dev metrics (``finetune/val/...``).

    The stage writes ``<output_dir>/finetune/``; when its ``done.json`` exists (an interrupted
    run being resumed) the stage is not repeated and its best weights are reloaded.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lowbit.models import load_finetuned_weights

    stage_dir = Path(cfg.paths.output_dir) / "finetune"
    done = stage_dir / "done.json"
    best = stage_dir / "checkpoints" / "best.ckpt"
    if not done.exists():
        model.train()  # from_pretrained returns eval mode; Lightning keeps module modes (dropout would be off)
        module = CompressionModule(model, datamodule.task, [], **{**cfg.optim, "lr": lr}, metric_prefix="finetune/")
        monitor = f"finetune/{cfg.optimized_metric}"
        ckpt = ModelCheckpoint(dirpath=str(stage_dir / "checkpoints"), filename="best", monitor=monitor,
                               mode=cfg.optimized_mode, save_weights_only=True, auto_insert_metric_name=False)
        trainer_cfg = OmegaConf.merge(cfg.trainer, {"max_epochs": epochs,
                                                    "default_root_dir": str(stage_dir)})
        log.info("stage 0: fine-tuning the float model for %d epoch(s) at lr %g", epochs, lr)
        trainer: pl.Trainer = build(trainer_cfg, callbacks=[ckpt], logger=False, enable_progress_bar=False)
        trainer.fit(module, datamodule=datamodule)
        if best.exists():  # the best epoch, not the last (fast_dev_run saves none)
            load_finetuned_weights(model, best)
        # metrics of exactly the weights the compression stage starts from
        trainer.validate(module, datamodule=datamodule, verbose=False)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(module.final_metrics))
    elif best.exists():
        load_finetuned_weights(model, best)
    model.train()
    return json.loads(done.read_text())


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | list[float] | None:
    names = cfg.get("objectives") or cfg.optimized_metric
    if isinstance(names, str):
        return metrics.get(names)
    return [metrics.get(n) for n in names]


def run(cfg: DictConfig) -> float | list[float] | None:
    job = setup(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in job.loggers:
        logger.log_hyperparams(resolved)
    size = job.module.model_size()
    log.info("model size %.2f MB (%.1fx smaller than fp32)", size["model/size_mb"], size["model/compression"])
    job.trainer.fit(job.module, datamodule=job.datamodule, ckpt_path=cfg.get("ckpt_path"))
    if job.module.final_metrics_step != job.trainer.global_step:  # training ended between validations
        job.trainer.validate(job.module, datamodule=job.datamodule, verbose=False)
    metrics = {**job.finetune_metrics, **job.module.final_metrics, **job.module.model_size()}
    metrics["train/global_step"] = job.trainer.global_step
    for group, method in job.methods.items():
        metrics.update({f"{group}/{k}": v for k, v in method.summary().items()})
    write_summary(job.loggers, metrics, cfg.paths.get("output_dir"))
    print_summary(job.datamodule.task.name, metrics)
    return objective(cfg, metrics)


def print_summary(task: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lowbit result ({task})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if k.startswith(("val", "model/")):
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)
