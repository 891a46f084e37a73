"""Entry point shared by ``train.py`` and the ``lowbit-train`` script.

``+dry_run=true``: compose and instantiate everything a run builds before training (model spec,
data module, every method group, optimizer, callbacks, trainer; ``lowbit.pipeline.dry_run``),
print what was built and exit 0, without loading weights or data and without training.

``preflight(argv)``: a single run's config is composed once before Hydra does, so a composition error
(an unknown option ``quantizer=quaternary``, a key that does not exist ``data.bogus=1``) is one line
and exit code 2 instead of Hydra's multi-line report. Multiruns and Hydra's own flags go straight to Hydra.
"""

from __future__ import annotations

import json
import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lowbit.errors import LowbitConfigError, LowbitError


def _one_line(e: BaseException) -> str:
    """Hydra's composition report on one line: the error, then the available options if it lists them."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if lines and lines[0].startswith("In 'train': "):
        lines[0] = lines[0][len("In 'train': "):]
    if len(lines) > 1 and lines[1].startswith("Available options in"):
        options = []
        for ln in lines[2:]:
            if ln.startswith("Config search path"):
                break
            options.append(ln)
        return f"{lines[0]} ({lines[1].rstrip(':').lower()}: {', '.join(options)})"
    return " ".join(lines)


def preflight(argv: list[str], config_name: str = "train") -> None:
    """Compose ``argv``'s single-run config; on a composition error print one line and exit 2."""
    if any(a.startswith("-") for a in argv):  # -m/--multirun, --cfg, --help, -cn ...: Hydra's business
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lowbit.compose import conf_dir

    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            compose(config_name, overrides=list(argv), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, LowbitConfigError) as e:
        print(f"lowbit: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


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
