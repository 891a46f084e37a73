"""The contract between the method config groups and the training loop.

Every option of ``quantizer``+``bit_assignment``, ``approximation``, ``pruning``,
``early_exit`` and ``distillation`` instantiates to a ``Method``. The pipeline calls
``prepare`` on each, in ``METHOD_ORDER``, before training; the Lightning module adds
each method's ``loss_terms`` to the task loss and the trainer gets its
``callbacks``. A method that needs nothing overrides nothing, so any combination
composes (ternary weights + early exit + pruning in one run).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from lowbit.quant.bit_assignment import PerModuleBits
from lowbit.quant.recipes import QuantRecipe
from lowbit.quant.surgery import QuantizationReport, quantize_

#: order in which methods prepare the model: a teacher is copied before any surgery,
#: weights are pruned before they are quantized, approximations and exits come last
METHOD_ORDER = ("distillation", "pruning", "quantizer", "approximation", "early_exit")

#: f(model_outputs, batch) -> {name: weighted loss}
LossTerm = Callable[[Any, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


class Method:
    name = "none"
    #: weight of the task (hard-label) loss; TernaryBERT distillation sets 0
    task_loss_weight: float = 1.0

    def check_ready(self, has_finetuned_weights: bool) -> None:
        """Raise LowbitConfigError before training if the run lacks something this method needs."""

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def loss_terms(self) -> list[LossTerm]:
        return []

    def callbacks(self) -> list:
        return []

    def forward_kwargs(self) -> dict[str, Any]:
        """Extra model() kwargs the method's losses need (e.g. output_hidden_states)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """What this method did, for the run summary."""
        return {}


class NoMethod(Method):
    """The ``none`` option of every method group."""


class QuantizationMethod(Method):
    """``quantizer`` + ``bit_assignment``: fake-quant surgery before training."""

    name = "quantization"

    def __init__(self, recipe: QuantRecipe, bits: PerModuleBits):
        self.recipe, self.bits = recipe, bits
        self.report: QuantizationReport | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        self.report = quantize_(model, self.recipe, self.bits)
        return model

    def callbacks(self) -> list:
        return self.recipe.callbacks()

    def summary(self) -> dict[str, Any]:
        if self.report is None:
            return {}
        return {"quantized_modules": len(self.report.quantized), "float_modules": len(self.report.float_kept),
                "attention_act_sites": len(self.report.attention_sites),
                **{f"bits/{k}": v for k, v in self.bits.describe().items()}}
