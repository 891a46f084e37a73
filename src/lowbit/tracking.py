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


RUN_ID_FILE = "wandb-run-id"


def _unreachable(base_url: str, timeout: float = 3.0) -> str | None:
    """Why ``base_url`` cannot be reached (None if a TCP connection opens within ``timeout`` seconds)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def online_or_offline(mode: str) -> str:
    """``online`` only if it can work: without an API key, or with the W&B server unreachable, the run goes
    offline and says so in one line (no hang, no traceback)."""
    if mode != "online":
        return mode
    if not wandb_api_key_configured():
        print("lowbit: W&B online mode without an API key (WANDB_API_KEY or `wandb login`): running offline")
        return "offline"
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    reason = _unreachable(base_url)
    if reason is not None:
        print(f"lowbit: W&B server {base_url} unreachable ({reason}): running offline; sync later with `wandb sync`")
        return "offline"
    return mode


def wandb_logger(project: str = "lowbit", name: str | None = None, save_dir: str = ".", mode: str = "auto",
                 entity: str | None = None, group: str | None = None, tags: list[str] | None = None,
                 job_type: str | None = None) -> WandbLogger:
    """The W&B logger of a run dir. The run id is kept in ``<save_dir>/wandb-run-id``: a run resumed in the
    same directory (``ckpt_path=last|auto``) continues the same W&B run."""
    mode = online_or_offline(resolve_wandb_mode(mode))
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = Path(save_dir) / RUN_ID_FILE
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        import secrets
        import string

        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id format
        id_file.write_text(run_id)
    return WandbLogger(project=project, name=name, save_dir=save_dir, mode=mode, entity=entity, group=group,
                       tags=list(tags or []), job_type=job_type, id=run_id, resume="allow")


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
