"""Compose the training config outside ``@hydra.main`` (tables, analyses, tests).

The config directory is ``$LOWBIT_CONF_DIR``, else ``./conf``, else the ``conf/`` of the
source checkout lowbit is installed from (editable installs).
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lowbit.errors import check


def conf_dir() -> Path:
    candidates = [os.environ.get("LOWBIT_CONF_DIR"), Path.cwd() / "conf", Path(__file__).resolve().parents[2] / "conf"]
    for c in candidates:
        if c and (Path(c) / "train.yaml").is_file():
            return Path(c).resolve()
    check(False, "cannot find lowbit's conf/ (run from the repository root or set LOWBIT_CONF_DIR)")
    raise AssertionError  # unreachable


def compose_train(overrides: list[str], output_dir: str | Path, root_dir: str | Path | None = None,
                  log_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> DictConfig:
    """``conf/train.yaml`` composed as ``python train.py OVERRIDES`` would, writing to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    root = Path(root_dir or Path.cwd())
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(log_dir or root / "logs")
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
        del cfg.hydra
    return cfg
