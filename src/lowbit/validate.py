"""Cross-cutting checks of a composed run config, before anything is built or trained.

``validate_run_config(cfg)`` is the first thing ``lowbit.pipeline.setup`` and ``lowbit.pipeline.dry_run``
do. Each problem is one ``LowbitConfigError`` line naming the option (or environment variable):

- environment: ``LOWBIT_CONF_DIR`` set but without a ``train.yaml``;
- ``data.task`` not chosen (``data.task: ???``: pick ``data=<task>``), or not a GLUE task;
- ``seed``: an integer in [0, 2**32 - 1] or null;
- ``trainer.max_epochs`` / ``trainer.max_steps``: integers >= -1, not both -1 (training without end);
- ``optimized_metric`` (and every callback's ``monitor``): a metric the task logs (``val/acc``; MNLI
  also ``val_mm/acc``; CoLA ``val/mcc``; ...: ``GlueTask.logged_metrics``), ``optimized_mode`` min or max;
- ``objectives``: names the run reports (dev metrics, ``<stage>/<dev metric>``, ``model/size_bits``,
  ``model/size_mb``, ``model/compression``, ``train/global_step``, ``train/loss_*``,
  ``<method group>/<summary key>``), as many as ``hydra.sweeper.direction`` in a sweep;
- every ``_target_`` a run instantiates (model, data, trainer, method groups, ``optim.optimizer`` /
  ``optim.scheduler``, callbacks, loggers) importable: a typo names the option, not Hydra's traceback;
- a paper table spec merged into a run (``+table=NAME``): run it with ``python -m lowbit.tables NAME``.

Values inside one group's options (bits, sparsity, ``optim.lr``, ``data.batch_size``...) are checked where
they are used (the method, ``lowbit.optim``, ``lowbit.data``); data files by ``GLUEDataModule.check_sources``.

One fix rather than an error: with ``trainer.enable_progress_bar=false`` a progress-bar callback
(``callbacks=default`` has a ``RichProgressBar``, which Lightning refuses beside a disabled bar) is
dropped from ``cfg.callbacks``, so the switch does what it says.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lowbit.errors import LowbitConfigError, check

log = logging.getLogger(__name__)

CONF_DIR_ENV = "LOWBIT_CONF_DIR"
#: results of every run besides the task's dev metrics (``lowbit.pipeline.train``)
RUN_RESULTS = ("model/size_bits", "model/size_mb", "model/compression", "train/global_step")
MAX_SEED = 2**32 - 1


def validate_run_config(cfg: DictConfig) -> None:
    """Raise one ``LowbitConfigError`` line for the first cross-cutting problem of ``cfg`` (see module doc)."""
    try:
        check_environment()
        task = _task(cfg)
        _check_not_a_table(cfg)
        _check_seed(cfg.get("seed"))
        _check_trainer(cfg)
        _check_metrics(cfg, task)
        _check_targets(cfg)
        _drop_disabled_progress_bar(cfg)
    except OmegaConfBaseException as e:  # a bad interpolation (${data.nope}) or a missing value (???)
        key = getattr(e, "full_key", None) or _failing_key(cfg)
        raise LowbitConfigError(f"{key + ': ' if key else ''}{_first_line(e)}") from None


def _failing_key(cfg: DictConfig) -> str | None:
    """The first top-level key (or ``group.key``) of ``cfg`` that does not resolve."""
    for key in cfg:
        node = cfg._get_node(key)
        try:
            if OmegaConf.is_config(node):
                for sub in node:
                    try:
                        node[sub]
                    except OmegaConfBaseException:
                        return f"{key}.{sub}"
            else:
                cfg[key]
        except OmegaConfBaseException:
            return str(key)
    return None


def check_environment() -> None:
    conf = os.environ.get(CONF_DIR_ENV)
    if conf:
        check((Path(conf) / "train.yaml").is_file(),
              f"{CONF_DIR_ENV}={conf!r} has no train.yaml (point it at lowbit's conf/ directory or unset it)")


def _task(cfg: DictConfig):
    from lowbit.data.tasks import GLUE_TASKS

    data = cfg.get("data")
    check(OmegaConf.is_dict(data) or isinstance(data, dict), "the config has no data group: choose a task with data=<task>")
    if OmegaConf.is_dict(data) and OmegaConf.is_missing(data, "task"):
        raise LowbitConfigError(f"data.task is not set: choose a task with data=<task> ({', '.join(GLUE_TASKS)})")
    return GLUE_TASKS.get(data.get("task"))


def _check_not_a_table(cfg: DictConfig) -> None:
    table = cfg.get("table")
    if OmegaConf.is_dict(table) and "rows" in table:
        raise LowbitConfigError("table=... is a paper table spec, not a training option: run it with "
                                "python -m lowbit.tables NAME")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seed(seed: Any) -> None:
    check(seed is None or (_is_int(seed) and 0 <= seed <= MAX_SEED),
          f"seed must be an integer in [0, {MAX_SEED}] or null, got {seed!r}")


def _check_trainer(cfg: DictConfig) -> None:
    trainer = cfg.get("trainer")
    if not OmegaConf.is_dict(trainer):
        return
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    check(max_epochs is None or (_is_int(max_epochs) and max_epochs >= -1),
          f"trainer.max_epochs must be an integer >= -1 (-1: no limit) or null, got {max_epochs!r}")
    check(_is_int(max_steps) and max_steps >= -1,
          f"trainer.max_steps must be an integer >= -1 (-1: no limit), got {max_steps!r}")
    if trainer.get("fast_dev_run"):
        return
    if max_epochs == -1 and max_steps == -1:
        scheduled = OmegaConf.is_dict(cfg.get("optim")) and cfg.optim.get("scheduler") is not None
        check(trainer.get("max_time") is not None and not scheduled,
              "trainer.max_epochs=-1 with trainer.max_steps=-1 trains without end (and the LR schedule needs "
              "a length): set trainer.max_epochs or trainer.max_steps")


def reported_metric(name: str, task) -> bool:
    """Whether a finished run of ``task`` reports ``name`` (what ``objectives`` may name)."""
    from lowbit.methods import METHOD_ORDER

    logged = task.logged_metrics()
    if name in logged or name in RUN_RESULTS or name.startswith("train/loss_"):
        return True
    prefix, _, rest = name.partition("/")
    return bool(rest) and (rest in logged or prefix in METHOD_ORDER)  # <stage>/val/acc, pruning/sparsity


def _check_metrics(cfg: DictConfig, task) -> None:
    logged = task.logged_metrics()
    listing = f"task {task.name} logs: {', '.join(logged)}"
    metric = cfg.get("optimized_metric")
    check(metric is not None, f"optimized_metric must be set (one of the metrics {listing})")
    option = "optimized_metric"
    raw = cfg._get_node("optimized_metric")._value() if "optimized_metric" in cfg else None
    if isinstance(raw, str) and raw.replace(" ", "") == "${data.metric}":
        option = "optimized_metric (data.metric)"
    check(isinstance(metric, str) and metric in logged, f"{option}={metric!r} is not logged: {listing}")
    mode = cfg.get("optimized_mode", "max")
    check(mode in ("min", "max"), f"optimized_mode must be min or max, got {mode!r}")

    objectives = cfg.get("objectives")
    if objectives is not None:
        names = [objectives] if isinstance(objectives, str) else objectives
        check(OmegaConf.is_list(names) or isinstance(names, (list, tuple)),
              f"objectives must be a metric name or a list of them, got {objectives!r}")
        check(len(names) > 0, "objectives must not be empty (null: optimized_metric)")
        for name in names:
            check(isinstance(name, str) and reported_metric(name, task),
                  f"objectives: {name!r} is not a result of this run ({listing}; also {', '.join(RUN_RESULTS)}, "
                  f"train/loss_<term>, <stage>/<dev metric>, <method group>/<summary key>)")
    _check_sweep_directions(objectives)

    for name, node in (cfg.get("callbacks") or {}).items():
        if OmegaConf.is_dict(node) and node.get("monitor") is not None:
            monitor = node.get("monitor")
            check(isinstance(monitor, str) and (monitor in logged or monitor.startswith("train/loss")),
                  f"callbacks.{name}.monitor={monitor!r} is not logged: {listing}, train/loss")


def _check_sweep_directions(objectives: Any) -> None:
    """In a sweep, one ``hydra.sweeper.direction`` per objective (else every trial fails after training)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.get("mode") != RunMode.MULTIRUN:
        return
    direction = OmegaConf.select(hydra_cfg, "sweeper.direction", default=None)
    if direction is None:
        return
    n_dir = len(direction) if OmegaConf.is_list(direction) or isinstance(direction, (list, tuple)) else 1
    n_obj = 1 if objectives is None or isinstance(objectives, str) else len(objectives)
    check(n_dir == n_obj, f"objectives names {n_obj} metric(s) (null: optimized_metric alone) but "
                          f"hydra.sweeper.direction has {n_dir}")


def _target_nodes(cfg: DictConfig):
    """(option path, node) of every top-level ``_target_`` a run instantiates."""
    from lowbit.methods import METHOD_ORDER

    for key in ("model", "data", "trainer", *METHOD_ORDER):
        yield key, cfg.get(key)
    optim = cfg.get("optim")
    if OmegaConf.is_dict(optim):
        for key in ("optimizer", "scheduler"):
            yield f"optim.{key}", optim.get(key)
    for group in ("callbacks", "logger"):
        nodes = cfg.get(group)
        if OmegaConf.is_dict(nodes):
            for name in nodes:
                yield f"{group}.{name}", nodes.get(name)


def import_error(target: str) -> str | None:
    """Why ``target`` (``pkg.module.Name``) cannot be imported, in one line, or None if it can."""
    import importlib

    if not target or not all(part.isidentifier() for part in target.split(".")):
        return "not a dotted Python name"
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):  # this module (or its package) is not there
                continue
            return f"importing {module_name} fails ({type(e).__name__}: {_first_line(e)})"
        except Exception as e:  # noqa: BLE001 - the module itself fails to import
            return f"importing {module_name} fails ({type(e).__name__}: {_first_line(e)})"
        for j, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                return f"module {'.'.join(parts[:j])!r} has no attribute {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"no module named {parts[0]!r}"


def _check_targets(cfg: DictConfig) -> None:
    for option, node in _target_nodes(cfg):
        if OmegaConf.is_dict(node) and node.get("_target_") is not None:
            target = node.get("_target_")
            reason = import_error(str(target))
            check(reason is None, f"{option}._target_={str(target)!r} cannot be imported: {reason}")


def _is_progress_bar(target: Any) -> bool:
    from hydra.utils import get_class
    from pytorch_lightning.callbacks.progress import ProgressBar

    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - a bad _target_ is reported when the callback is built
        return False
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def _drop_disabled_progress_bar(cfg: DictConfig) -> None:
    trainer, callbacks = cfg.get("trainer"), cfg.get("callbacks")
    if not OmegaConf.is_dict(trainer) or trainer.get("enable_progress_bar", True) is not False \
            or not OmegaConf.is_dict(callbacks):
        return
    for name in list(callbacks):
        node = callbacks[name]
        if OmegaConf.is_dict(node) and _is_progress_bar(node.get("_target_")):
            log.info("trainer.enable_progress_bar=false: callbacks.%s (%s) dropped", name, node.get("_target_"))
            callbacks[name] = None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
