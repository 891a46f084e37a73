"""Experiment tracking: W&B that never crashes offline, CSV, or nothing.

``wandb_logger(mode="auto")`` goes online only when an API key is configured
(``WANDB_API_KEY`` or a netrc entry for api.wandb.ai) and otherwise runs offline,
printing where the run was written and how to sync it.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from pathlib import Path
from typing import Any, Callable

from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from lowbit.errors import check
from lowbit.registry import Registry

log = logging.getLogger(__name__)
WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` -> $WANDB_MODE if set, else online with an API key, else offline."""
    check(mode in WANDB_MODES, f"logger.wandb.mode must be one of {WANDB_MODES}, got {mode!r}")
    if mode == "auto":
        return os.environ.get("WANDB_MODE") or ("online" if wandb_api_key_configured() else "offline")
    return mode


def wandb_logger(project: str = "lowbit", name: str | None = None, save_dir: str = ".", mode: str = "auto",
                 entity: str | None = None, group: str | None = None, tags: list[str] | None = None,
                 job_type: str | None = None) -> WandbLogger:
    mode = resolve_wandb_mode(mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(project=project, name=name, save_dir=save_dir, mode=mode, entity=entity, group=group,
                       tags=list(tags or []), job_type=job_type)


def _wandb_summary(logger: WandbLogger, values: dict[str, Any]) -> None:
    logger.experiment.summary.update(values)


def _csv_summary(logger: CSVLogger, values: dict[str, Any]) -> None:
    logger.log_metrics({k: v for k, v in values.items() if isinstance(v, (int, float))})
    logger.save()
    print(f"CSV metrics in {logger.log_dir}")


def _wandb_finish(logger: WandbLogger, values: dict[str, Any]) -> None:
    _wandb_summary(logger, values)
    run = logger.experiment
    run_dir = run.dir.rsplit("/files", 1)[0]
    if getattr(run.settings, "mode", "") == "offline" or getattr(run.settings, "_offline", False):
        print(f"W&B offline run written to {run_dir} (upload later with: wandb sync {run_dir})")
    else:
        print(f"W&B run: {run.url}")
    run.finish()


SUMMARY_WRITERS: Registry[Callable[[Any, dict], None]] = Registry("logger type")
SUMMARY_WRITERS.register(WandbLogger, _wandb_finish)
SUMMARY_WRITERS.register(CSVLogger, _csv_summary)


def write_summary(loggers: list[Logger], values: dict[str, Any], output_dir: str | None) -> None:
    """Final metrics into each logger's summary (and ``summary.json``), saying where each run went."""
    for logger in loggers:
        if type(logger) in SUMMARY_WRITERS:
            SUMMARY_WRITERS.get(type(logger))(logger, values)
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        Path(output_dir, "summary.json").write_text(json.dumps(values, indent=2, default=str))
