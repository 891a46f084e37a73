"""Entry point shared by ``train.py`` and the ``lowbit-train`` script.

``+dry_run=true``: compose and instantiate everything a run builds before training (model spec,
data module, every method group, optimizer, callbacks, trainer; ``lowbit.pipeline.dry_run``),
print what was built and exit 0, without loading weights or data and without training.
"""

from __future__ import annotations

import json
import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lowbit.errors import LowbitConfigError, LowbitError


def train_main(cfg: DictConfig) -> float | list[float] | None:
    from lowbit.pipeline import dry_run, run

    try:
        if cfg.get("dry_run"):
            summary = dry_run(cfg)
            print("lowbit: dry run OK (nothing loaded or trained):")
            print(json.dumps(summary, indent=2, default=str))
            return None
        return run(cfg)
    except LowbitError as e:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed (with this line as the reason) and goes on
        print(f"lowbit: error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, LowbitConfigError) else 1)
