"""Optimizer and LR schedule, configured as Hydra partials (``optim.optimizer`` / ``optim.scheduler``).

``optim.optimizer`` is any ``torch.optim`` class with ``_partial_: true``; the Lightning module calls
it with the parameter groups (methods' own groups first, then decay / no-decay). ``optim.scheduler``
is a partial called with ``(optimizer, total_steps=...)`` and stepped every optimizer step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import DictConfig

from lowbit.errors import check


def linear_warmup(optimizer, total_steps: int, warmup_ratio: float = 0.1):
    """Linear warmup over ``warmup_ratio`` of the steps, then linear decay to 0 (BERT fine-tuning)."""
    from transformers import get_linear_schedule_with_warmup

    check(0 <= warmup_ratio < 1, f"optim.warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    return get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)


def constant(optimizer, total_steps: int):
    """No schedule: the optimizer's LR throughout."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@dataclass
class OptimSpec:
    optimizer: Callable[..., Any]  # partial: optimizer(param_groups)
    scheduler: Callable[..., Any] | None  # partial: scheduler(optimizer, total_steps=N)
    target: str  # the optimizer's _target_, for methods that need a kind of optimizer (LAT: Adam)

    def with_lr(self, lr: float) -> "OptimSpec":
        return OptimSpec(functools.partial(self.optimizer, lr=lr), self.scheduler, self.target)


def _number(cfg: DictConfig, key: str):
    value = cfg.get(key)
    check(isinstance(value, (int, float)) and not isinstance(value, bool),
          f"optim.{key} must be a number, got {value!r}")
    return value


def build_optim(cfg: DictConfig) -> OptimSpec:
    """Validate ``optim`` (one line per bad value) and build its partials."""
    from lowbit.builder import build

    check(cfg.get("optimizer") is not None, "optim.optimizer must be set (a torch.optim class with _partial_: true)")
    lr, wd, warmup = _number(cfg, "lr"), _number(cfg, "weight_decay"), _number(cfg, "warmup_ratio")
    check(lr > 0, f"optim.lr must be positive, got {lr!r}")
    check(0 <= warmup < 1, f"optim.warmup_ratio must be in [0, 1), got {warmup!r}")
    check(wd >= 0, f"optim.weight_decay must be >= 0, got {wd!r}")
    optimizer = build(cfg.optimizer)
    check(callable(optimizer) and isinstance(optimizer, functools.partial),
          "optim.optimizer must set _partial_: true (it is called with the parameter groups)")
    scheduler = build(cfg.scheduler) if cfg.get("scheduler") is not None else None
    check(scheduler is None or isinstance(scheduler, functools.partial),
          "optim.scheduler must set _partial_: true (it is called with the optimizer and total_steps)")
    return OptimSpec(optimizer, scheduler, str(cfg.optimizer.get("_target_", "")))
