"""Entry point shared by ``train.py`` and the ``lowbit-train`` script."""

from __future__ import annotations

import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lowbit.errors import LowbitConfigError


def train_main(cfg: DictConfig) -> float | list[float] | None:
    from lowbit.pipeline import run

    try:
        return run(cfg)
    except LowbitConfigError as e:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed and goes on
        print(f"lowbit: error: {e}", file=sys.stderr)
        sys.exit(2)
