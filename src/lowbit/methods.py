"""The method contract: how an option of a method config group takes part in a run.

Every option of ``bit_assignment``, ``quantizer``, ``approximation``, ``pruning``,
``attention_span``, ``early_exit`` and ``distillation`` instantiates (Hydra ``_target_``) to a ``Method``. The
pipeline treats them all alike, in ``METHOD_ORDER``; no group is special. A method overrides
only the hooks it needs, so any combination composes (ternary weights + pruning + early exit).

Hook by hook, in the order a run calls them:

``check_ready(run)``
    Before anything loads or trains: raise ``LowbitConfigError`` (one line) if the run lacks
    something (distillation: a fine-tuned teacher; LAT: an Adam-family optimizer).
``incompatible_with(group, other)``
    A reason string if this option cannot run beside ``other`` (an option of ``group``); the
    pipeline stops before training with one line naming both options.
``stages()``
    Extra training stages (``Stage``): what trains, epochs, LR, which losses, observers frozen
    or not, and whether they run before ``prepare`` (on the float model) or after the main
    stage. The float fine-tune (``finetune.epochs``) is the pipeline's own first stage.
``prepare(model, edit)``
    Surgery through ``edit`` (``lowbit.edit.ModelEditor``): add weight/activation transforms,
    attention slots, replace role modules, add modules (off-ramps), leave notes in ``edit.plan``.
``param_groups(model)``
    ``ParamGroup`` s with their own LR / weight decay (movement scores, span parameters);
    everything else gets the optimizer's defaults (no decay on biases and LayerNorm).
``callbacks()``
    Lightning callbacks, collected *after* prepare (they may refer to what prepare built).
``forward_kwargs(mode)``
    Extra ``model(...)`` keyword arguments for ``"train"`` or ``"eval"`` forwards.
``loss_terms()``
    ``f(outputs, batch, step) -> {name: weighted loss}``, added to the task loss (weighted by
    the product of every method's ``task_loss_weight``); logged as ``train/loss_<name>``.
``eval_outputs(outputs, batch)`` / ``eval_metrics(collected, labels, task)``
    Keep extra tensors from the one evaluation pass (every off-ramp's logits) and turn the
    whole eval set's worth into metrics (a threshold curve), logged under ``val/``.
``cached_metrics()``
    Metrics that answer the whole job without building or training a model (None: train as usual),
    e.g. early exit scoring a threshold from a run's cached exit logits in an Optuna sweep.
``convert(model, backend)``
    What the method becomes in a deployed model; ``fake`` (float simulation) is the identity,
    ``lowbit.deploy`` lists the backends.
``summary()``
    What it did, for ``summary.json`` and the W&B summary (``<group>/<key>``).
``frozen_config(cfg)``
    The config that replays ``prepare`` without external inputs (Hessian files), for exports.

Adding a method: a class here (or in ``lowbit/algorithms/<method>/``), a YAML option under
``conf/<group>/``, and a method card with its test settings and the effect that proves it did
something (``lowbit.algorithms.card``). See "Add a method" in ``experiments/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

#: order in which methods prepare the model: a teacher is copied before any surgery; off-ramps are
#: added before bits are planned, so they are quantized like the final head; weights are pruned
#: before they are quantized; bits are planned before the quantizer reads the plan; the attention
#: span mask and approximations need no order (attention slots keep their own ``chain_order``)
METHOD_ORDER = ("distillation", "early_exit", "pruning", "attention_span", "bit_assignment", "quantizer",
                "approximation")

#: f(model_outputs, batch, global_step) -> {name: weighted loss}
LossTerm = Callable[[Any, Mapping[str, torch.Tensor], int], dict[str, torch.Tensor]]
MODES = ("train", "eval")


@dataclass
class RunInfo:
    """What ``check_ready`` may ask about the run being set up."""

    has_finetuned_weights: bool = False
    optimizer: str = "torch.optim.AdamW"  # the optimizer's _target_
    purpose: str = "train"
    num_labels: int | None = None  # the task's (1 = regression); None when not known (a dry run without data)


@dataclass
class ParamGroup:
    """Parameters with their own optimizer settings (None = the optimizer's default)."""

    params: Sequence[nn.Parameter]
    name: str
    lr: float | None = None
    weight_decay: float | None = None


@dataclass
class Stage:
    """An extra training stage of a method.

    ``position``: ``before_prepare`` runs on the float model before any surgery (only the task
    loss); ``after`` runs after the main stage on the prepared model. ``trainable(model)``
    returns the parameters that train (None: all). ``losses``: the method groups whose loss
    terms apply, plus ``"task"`` for the task loss (None: as in the main stage).
    ``freeze_observers``: activation ranges (EMA observers) do not move during the stage.
    Each stage writes ``<run dir>/<name>/`` and is not repeated when its ``done.json`` exists.
    """

    name: str
    epochs: int
    position: str = "after"
    lr: float | None = None
    trainable: Callable[[nn.Module], Iterable[nn.Parameter]] | None = None
    losses: tuple[str, ...] | None = None
    freeze_observers: bool = False
    monitor: str | None = None  # metric for the stage's best checkpoint (None: the run's optimized_metric)

    def __post_init__(self):
        from lowbit.errors import check

        check(self.position in ("before_prepare", "after"),
              f"stage {self.name!r}: position must be before_prepare or after, got {self.position!r}")
        check(isinstance(self.epochs, int) and self.epochs >= 0,
              f"stage {self.name!r}: epochs must be a non-negative integer, got {self.epochs!r}")


class Method:
    """Base class: every hook does nothing. ``group``/``option`` are set by the builder."""

    group: str = ""
    option: str = ""
    #: weight of the task (hard-label) loss; TernaryBERT distillation sets 0
    task_loss_weight: float = 1.0

    @property
    def label(self) -> str:
        """``group=option``, as on the command line."""
        return f"{self.group}={self.option}" if self.group else type(self).__name__

    def check_ready(self, run: RunInfo) -> None:
        """Raise LowbitConfigError before training if the run lacks something this method needs."""

    def incompatible_with(self, group: str, other: "Method") -> str | None:
        return None

    def stages(self) -> list[Stage]:
        return []

    def prepare(self, model: nn.Module, edit) -> None:
        pass

    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        return []

    def callbacks(self) -> list:
        return []

    def forward_kwargs(self, mode: str) -> dict[str, Any]:
        return {}

    def loss_terms(self) -> list[LossTerm]:
        return []

    def eval_outputs(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def eval_metrics(self, collected: dict[str, torch.Tensor], labels: torch.Tensor, task) -> dict[str, float]:
        return {}

    def cached_metrics(self) -> dict[str, float] | None:
        return None

    def convert(self, model: nn.Module, backend: str) -> nn.Module:
        return model

    def summary(self) -> dict[str, Any]:
        return {}

    def frozen_config(self, cfg: dict) -> dict:
        return cfg


class NoMethod(Method):
    """The ``none`` option of every method group."""


def check_compatible(methods: Mapping[str, Method]) -> None:
    """Stop with one line naming both options if any two chosen options cannot run together."""
    from lowbit.errors import LowbitConfigError

    items = list(methods.items())
    for i, (group_a, a) in enumerate(items):
        for group_b, b in items[i + 1:]:
            reason = a.incompatible_with(group_b, b) or b.incompatible_with(group_a, a)
            if reason:
                raise LowbitConfigError(f"{a.label} cannot be combined with {b.label}: {reason}")


def stages_of(methods: Mapping[str, Method], position: str) -> list[tuple[str, Stage]]:
    return [(g, s) for g, m in methods.items() for s in m.stages() if s.position == position]


def loss_groups(stage: Stage | None, methods: Mapping[str, Method]) -> list[str]:
    return list(methods) if stage is None or stage.losses is None else [g for g in methods if g in stage.losses]


def all_param_groups(methods: Mapping[str, Method], model: nn.Module) -> list[ParamGroup]:
    return [pg for m in methods.values() for pg in m.param_groups(model)]


__all__ = ["METHOD_ORDER", "LossTerm", "Method", "NoMethod", "ParamGroup", "RunInfo", "Stage", "check_compatible"]
