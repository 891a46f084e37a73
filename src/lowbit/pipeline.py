"""Build and run one training job from a composed Hydra config.

Everything is instantiated and validated (data files, model, every method option, their
combination, optimizer, callbacks, loggers, trainer) before the first training step of any
stage, so bad input fails in seconds with one line. Then:

1. stages that run before ``prepare`` on the float model: the float fine-tune
   (``finetune.epochs``, metrics ``finetune/val/...``) and any method's ``before_prepare`` stage;
2. every method's ``prepare`` in ``METHOD_ORDER`` (``lowbit.builder``); method callbacks are
   collected after it;
3. the main training stage (QAT / distillation / pruning, all methods' losses);
4. methods' ``after`` stages (e.g. DeeBERT's off-ramp stage), then a final evaluation.

Each extra stage writes ``<run dir>/<stage>/`` and is skipped (its weights reloaded) when its
``done.json`` exists, so an interrupted run resumes without redoing finished stages.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lowbit.builder import build, build_method, build_methods, method_choices, prepare_model
from lowbit.checkpointing import AtomicCheckpointIO, LastCheckpoint, ResumeState, atomic_save, resolve_ckpt_path
from lowbit.data.glue import GLUEDataModule
from lowbit.distributed import check_trainer_devices, is_rank_zero
from lowbit.edit import ModelEditor
from lowbit.errors import LowbitConfigError, check
from lowbit.methods import Method, RunInfo, Stage, all_param_groups, stages_of
from lowbit.models import ModelSpec
from lowbit.module import CompressionModule
from lowbit.optim import OptimSpec, build_optim
from lowbit.progress import TextProgress
from lowbit.quant.quantizers import set_observers_frozen
from lowbit.tracking import write_summary
from lowbit.validate import validate_run_config

log = logging.getLogger(__name__)


@dataclass
class Job:
    cfg: DictConfig
    datamodule: GLUEDataModule
    module: CompressionModule
    trainer: pl.Trainer
    methods: dict[str, Method]
    edit: ModelEditor
    optim: OptimSpec
    loggers: list = field(default_factory=list)
    stage_metrics: dict[str, float] = field(default_factory=dict)
    ckpt_path: str | None = None  # the checkpoint the main stage resumes from

    @property
    def model(self) -> nn.Module:
        return self.module.model


def finetune_stage(cfg: DictConfig) -> Stage | None:
    finetune = cfg.get("finetune") or {}
    epochs = finetune.get("epochs", 0)
    check(isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 0,
          f"finetune.epochs must be a non-negative integer, got {epochs!r}")
    if not epochs:
        return None
    lr = finetune.get("lr")
    check(isinstance(lr, (int, float)) and lr > 0, f"finetune.lr must be positive, got {lr!r}")
    return Stage("finetune", epochs, position="before_prepare", lr=lr, losses=("task",))


def setup(cfg: DictConfig, methods: dict[str, Method] | None = None) -> Job:
    """``methods``: the run's method groups when the caller built them already (``run``), else built here."""
    validate_run_config(cfg)  # first: cross-cutting one-line errors
    check(cfg.get("optimized_metric") is not None, "optimized_metric must be set")
    check_trainer_devices(cfg.trainer)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = cfg.paths.get("output_dir")
    if output_dir:
        check_writable(Path(output_dir), "paths.output_dir")
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir or ".")
    model_spec: ModelSpec = build(cfg.model)
    tokenizer = model_spec.load_tokenizer()
    datamodule: GLUEDataModule = build(cfg.data, tokenizer=tokenizer)
    datamodule.check_sources()
    methods = methods if methods is not None else build_methods(cfg, method_choices())
    optim = build_optim(cfg.optim)
    first = finetune_stage(cfg)
    before = ([("finetune", first)] if first else []) + stages_of(methods, "before_prepare")
    model = model_spec.build(datamodule.task.num_labels)
    run_info = RunInfo(has_finetuned_weights=bool(model_spec.init_checkpoint or before), optimizer=optim.target,
                       num_labels=datamodule.task.num_labels)
    for method in methods.values():
        method.check_ready(run_info)
    # everything is instantiated (and so validated) before the first training step of any stage
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [build(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    build(cfg.trainer, callbacks=[], logger=False)  # validates the trainer options
    check_free_space(Path(output_dir) if output_dir else None, model)
    stage_metrics: dict[str, float] = {}
    for group, stage in before:
        stage_metrics.update(run_stage(stage, model, {}, datamodule, cfg, optim))
    edit = prepare_model(model, methods, "train")
    # from_pretrained returns eval mode and Lightning keeps module modes: without this, dropout is off
    model.train()
    callbacks += [cb for m in methods.values() for cb in m.callbacks()]  # after prepare: they may refer to it
    callbacks.append(ResumeState(datamodule))
    trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                plugins=[AtomicCheckpointIO()])
    module = CompressionModule(model, datamodule.task, methods, optim, all_param_groups(methods, model))
    return Job(cfg, datamodule, module, trainer, methods, edit, optim, loggers, stage_metrics, ckpt_path)


def check_writable(directory: Path, option: str) -> None:
    """One line naming the directory if lowbit cannot write there (read-only, not a directory)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".lowbit-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise LowbitConfigError(f"{option}={str(directory)!r} is not writable: {e.strerror or type(e).__name__}") \
            from None


def check_free_space(directory: Path | None, model: nn.Module) -> None:
    """One line before training if the disk cannot hold a checkpoint (weights + Adam's two moments) twice over."""
    if directory is None:
        return
    import shutil

    need = 2 * 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(directory).free
    check(free >= need, f"paths.output_dir={str(directory)!r}: {free / 1e6:.0f} MB free, a checkpoint of this model needs "
                        f"about {need / 2e6:.0f} MB (twice that with the temporary copy of an atomic write)")


def run_stage(stage: Stage, model: nn.Module, methods: Mapping[str, Method], datamodule: GLUEDataModule,
              cfg: DictConfig, optim: OptimSpec) -> dict[str, float]:
    """Train one extra stage in place; returns its final dev metrics (``<stage>/val/...``).

    The stage writes ``<output_dir>/<stage>/``; when its ``done.json`` exists (a run being resumed)
    the stage is not repeated and its best weights are reloaded.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lowbit.models import load_finetuned_weights

    stage_dir = Path(cfg.paths.output_dir) / stage.name
    done, best = stage_dir / "done.json", stage_dir / "checkpoints" / "best.ckpt"
    if done.exists():
        if best.exists():
            load_finetuned_weights(model, best, option=f"stage {stage.name} checkpoint")
        model.train()
        return json.loads(done.read_text())
    trainable = None if stage.trainable is None else {id(p) for p in stage.trainable(model)}
    saved_grad = {id(p): p.requires_grad for p in model.parameters()}
    if trainable is not None:
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
    if stage.freeze_observers:
        set_observers_frozen(model, True)
    try:
        model.train()  # from_pretrained returns eval mode; Lightning keeps module modes (dropout would be off)
        prefix = f"{stage.name}/"
        module = CompressionModule(model, datamodule.task, methods, optim.with_lr(stage.lr) if stage.lr else optim,
                                   all_param_groups(methods, model), metric_prefix=prefix, loss_groups=stage.losses)
        monitor = prefix + (stage.monitor or cfg.optimized_metric)
        ckpt = ModelCheckpoint(dirpath=str(stage_dir / "checkpoints"), filename="best", monitor=monitor,
                               mode=cfg.optimized_mode, save_weights_only=True, auto_insert_metric_name=False,
                               # saved at the validation's end, before the epoch-end last.ckpt, which then holds
                               # this epoch's best score (see conf/callbacks/default.yaml); resumed, the stage
                               # rewrites best.ckpt, the file the next stage loads (no stale one beside best-v1)
                               save_on_train_epoch_end=False, enable_version_counter=False)
        # the stage resumes mid-way from its own last.ckpt, like the main stage
        every_n = OmegaConf.select(cfg, "callbacks.last_checkpoint.every_n_train_steps", default=50)
        last = LastCheckpoint(str(stage_dir / "checkpoints"), every_n)
        trainer_cfg = OmegaConf.merge(cfg.trainer, {"max_epochs": stage.epochs, "default_root_dir": str(stage_dir)})
        log.info("stage %s: %d epoch(s) at lr %s", stage.name, stage.epochs, stage.lr or "optim.lr")
        # no bar in a stage (one bar per run): its progress is written as text lines, at the run's text_progress
        # settings when it has them
        progress_cfg = OmegaConf.select(cfg, "callbacks.text_progress", default=None)
        progress = TextProgress(**{k: v for k, v in (progress_cfg or {}).items()
                                   if k in ("every_seconds", "every_n_steps")},
                                label=f"{cfg.get('task_name') or 'train'}:{stage.name}")
        trainer: pl.Trainer = build(trainer_cfg, callbacks=[ckpt, last, ResumeState(datamodule), progress],
                                    logger=False, enable_progress_bar=False, plugins=[AtomicCheckpointIO()])
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last.path) if last.path.is_file() else None,
                    weights_only=True)  # a resumed checkpoint is data, never code
        if best.exists():  # the best epoch, not the last (fast_dev_run saves none)
            load_finetuned_weights(model, best, option=f"stage {stage.name} checkpoint")
        # metrics of exactly the weights the next stage starts from
        trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        for p in model.parameters():
            p.requires_grad_(saved_grad.get(id(p), True))
        if stage.freeze_observers:
            set_observers_frozen(model, False)
    if is_rank_zero():
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(module.final_metrics))
    model.train()
    return module.final_metrics


def save_final_checkpoint(trainer: pl.Trainer) -> list[Path]:
    """Write the final state to every ``last.ckpt`` (atomically): a finished run's final weights are always there."""
    written = []
    for callback in trainer.callbacks:
        if isinstance(callback, LastCheckpoint):
            atomic_save(trainer, callback.path)
            written.append(callback.path)
    return written


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | list[float] | None:
    names = cfg.get("objectives") or cfg.optimized_metric
    if isinstance(names, str):
        return metrics.get(names)
    return [metrics.get(n) for n in names]


@dataclass
class Result:
    job: Job
    metrics: dict[str, Any]


def train(cfg: DictConfig, methods: dict[str, Method] | None = None) -> Result:
    """Set up and run every stage of one job; returns the job (its trained model) and the final metrics."""
    job = setup(cfg, methods)
    if is_rank_zero():
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for logger in job.loggers:
            logger.log_hyperparams(resolved)
    size = job.module.model_size()
    log.info("model size %.2f MB (%.1fx smaller than fp32)", size["model/size_mb"], size["model/compression"])
    job.trainer.fit(job.module, datamodule=job.datamodule, ckpt_path=job.ckpt_path, weights_only=True)
    after = stages_of(job.methods, "after")
    for _, stage in after:
        job.stage_metrics.update(run_stage(stage, job.model, job.methods, job.datamodule, cfg, job.optim))
    if after or job.module.final_metrics_step != job.trainer.global_step:  # training ended between validations
        job.trainer.validate(job.module, datamodule=job.datamodule, verbose=False)
    save_final_checkpoint(job.trainer)
    metrics: dict[str, Any] = {**job.stage_metrics, **job.module.final_metrics, **job.module.model_size()}
    metrics["train/global_step"] = job.trainer.global_step
    metrics.update({f"train/loss_{k}": v for k, v in job.module.last_loss_terms.items()})
    for group, method in job.methods.items():
        metrics[f"{group}/option"] = method.option
        metrics.update({f"{group}/{k}": v for k, v in method.summary().items()})
    if is_rank_zero():
        write_summary(job.loggers, metrics, cfg.paths.get("output_dir"))
        print_summary(job.datamodule.task.name, metrics)
    return Result(job, metrics)


def run(cfg: DictConfig) -> float | list[float] | None:
    """``train`` and return the sweep objective (``optimized_metric`` or the list in ``objectives``).

    A method whose ``cached_metrics()`` answers the job (early exit scoring a threshold from cached exit
    logits) makes it a few tensor ops: no model or data is loaded, nothing trains."""
    validate_run_config(cfg)
    methods = build_methods(cfg, method_choices())
    for group, method in methods.items():
        cached = method.cached_metrics()
        if cached is not None:
            metrics = {**{f"{group}/{k}": v for k, v in cached.items()}, f"{group}/option": method.option,
                       f"{group}/scored_from_cache": True}
            if is_rank_zero():
                write_summary([], metrics, cfg.paths.get("output_dir"))
            return objective(cfg, metrics)
    return objective(cfg, train(cfg, methods).metrics)


def print_summary(task: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lowbit result ({task})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if k.startswith(("val", "model/")) or k.endswith("/sparsity"):
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def dry_run(cfg: DictConfig, *, defer: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Instantiate and validate what ``setup`` builds before training, without loading weights or data.

    Builds ``cfg.model`` (a ``ModelSpec``: its source resolved, ``init_checkpoint`` checked; no weights
    loaded), ``cfg.data`` (no tokenizer; local split files checked to exist, none read), every method
    group (``build_methods``, combination and ``check_ready`` included), the optimizer and schedule,
    the stages, the callbacks and the trainer. Loggers are checked against their target's signature
    but not instantiated (they create run directories). ``defer`` maps top-level config keys
    (``model``, ``bit_assignment``, ...) to a reason: those are composed and their keys checked against
    their target's signature, but not instantiated (e.g. a table row whose ``sensitivity_file`` an
    earlier row produces). Returns a summary of what was built.
    """
    validate_run_config(cfg)  # first: cross-cutting one-line errors
    import inspect

    from hydra.utils import get_object

    from lowbit.errors import LowbitConfigError
    from lowbit.methods import METHOD_ORDER, check_compatible

    defer = dict(defer or {})

    def check_signature(name: str, node: Any) -> str:
        """``node``'s keys bind to its ``_target_``'s signature (what instantiating it would pass)."""
        target = node.get("_target_")
        check(target is not None, f"{name}: no _target_")
        try:
            fn = get_object(str(target))
        except Exception as e:
            raise LowbitConfigError(f"{name}: cannot import _target_ {target!r}: {e}") from None
        kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
        try:
            inspect.signature(fn).bind(**kwargs)
        except TypeError as e:
            raise LowbitConfigError(f"{name}: {target}: {e}") from None
        return str(target)

    for key in defer:
        if OmegaConf.is_dict(cfg.get(key)) and "_target_" in cfg[key]:
            check_signature(key, cfg[key])
    check(cfg.get("optimized_metric") is not None, "optimized_metric must be set")
    summary: dict[str, Any] = {"task_name": cfg.get("task_name")}
    if "model" in defer:
        init = (cfg.model or {}).get("init_checkpoint")
        summary["model"] = {"name": cfg.model.get("name"), "deferred": defer["model"]}
    else:
        model_spec: ModelSpec = build(cfg.model)
        init = model_spec.init_checkpoint
        location = model_spec.location() if model_spec.source != "random" else None  # no download: a path or hub id
        if model_spec.source == "random" or model_spec.tokenizer is not None:
            model_spec.tokenizer_location()
        summary["model"] = {"name": model_spec.name, "source": model_spec.source, "location": location,
                            "init_checkpoint": init}
    if "data" in defer:
        summary["data"] = {"deferred": defer["data"]}
    else:
        datamodule: GLUEDataModule = build(cfg.data, tokenizer=None)
        datamodule.check_sources()
        summary["data"] = {"task": datamodule.task.name,
                           "source": str(datamodule.data_dir) if datamodule.data_dir is not None else "hub"}
    choices = method_choices()
    if not any(g in defer for g in METHOD_ORDER):
        methods = build_methods(cfg, choices)
    else:
        methods = {g: build_method(cfg, g, choices) for g in METHOD_ORDER if g not in defer}
        check_compatible(methods)
    summary["methods"] = {g: ({"deferred": defer[g]} if g in defer else methods[g].option) for g in METHOD_ORDER}
    optim = build_optim(cfg.optim)
    summary["optim"] = {"optimizer": optim.target, "lr": cfg.optim.get("lr"),
                        "scheduler": (cfg.optim.get("scheduler") or {}).get("_target_")}
    first = finetune_stage(cfg)
    before = ([("finetune", first)] if first else []) + stages_of(methods, "before_prepare")
    num_labels = None if "data" in defer else datamodule.task.num_labels
    run_info = RunInfo(has_finetuned_weights=bool(init or before), optimizer=optim.target, num_labels=num_labels)
    for method in methods.values():
        method.check_ready(run_info)
    summary["stages"] = ([s.name if g == s.name else f"{g}:{s.name}" for g, s in before] + ["train"]
                         + [f"{g}:{s.name}" for g, s in stages_of(methods, "after")])
    ckpt_path = cfg.get("ckpt_path")
    check("ckpt_path" in defer or ckpt_path in (None, "last", "best", "hpc", "registry") or Path(str(ckpt_path)).exists(),
          f"ckpt_path={ckpt_path!r} does not exist")
    callbacks = {name: type(build(c)).__name__ for name, c in (cfg.get("callbacks") or {}).items() if c is not None}
    loggers = {}
    for name, lg in (cfg.get("logger") or {}).items():
        if lg is None:
            continue
        loggers[name] = check_signature(f"logger.{name}", lg)
    check_trainer_devices(cfg.trainer)
    build(cfg.trainer, callbacks=[], logger=False)  # validates the trainer options
    summary.update(callbacks=callbacks, loggers=loggers,
                   trainer={k: cfg.trainer.get(k) for k in ("max_epochs", "max_steps", "accelerator", "fast_dev_run")})
    summary["deferred"] = defer
    return summary
