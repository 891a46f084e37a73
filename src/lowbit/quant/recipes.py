"""The ``quantizer`` config group: which quantizer a weight gets at the bit-width planned for it.

A recipe is a method (``QuantRecipe``) with explicit fields (what the YAML option sets). Its
``prepare`` reads ``edit.plan["bits"]`` (written by ``bit_assignment``), builds every weight
quantizer and validates it against its weight *before changing anything*, then adds each as the
``quantizer`` transform of that layer's chain, and the activation quantizers to the input slot of
quantized Linears and to the attention slots. Sites: ``linear_input``, ``query``, ``key``,
``value`` and ``attention_probs``.

A Linear that ``bit_assignment`` leaves float (the pooler with ``pooler: null``, say) gets no
input quantizer unless ``activation.float_layers: quantize``; the summary says how many were
skipped (``quantizer/activation_skipped_float_linears``). The classifier is never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from torch import nn

from lowbit.errors import check
from lowbit.methods import Method
from lowbit.quant.granularity import Granularity, make_granularity
from lowbit.quant.quantizers import ActivationQuantizer, UniformWeightQuantizer, WeightQuantizer
from lowbit.roles import CLASSIFIER_ROLES, EMBEDDING_ROLES, WEIGHT_ROLES, Target

log = logging.getLogger(__name__)

ACTIVATION_SITES = ("linear_input", "query", "key", "value", "attention_probs")
FLOAT_LAYER_POLICIES = ("skip", "quantize")
#: attention site -> hooks slot
ATTENTION_SITE_SLOTS = {"query": "query", "key": "key", "value": "value", "attention_probs": "probs"}


@dataclass
class ActivationSpec:
    """Activation quantization settings (``quantizer.activation``)."""

    bits: int | None = 8
    symmetric: bool = True
    mode: str = "dynamic"
    clip: float | None = 2.5
    momentum: float = 0.99
    sites: Sequence[str] = ACTIVATION_SITES
    #: inputs of Linear layers bit_assignment leaves float: skip (default) or quantize
    float_layers: str = "skip"

    def __post_init__(self):
        self.sites = tuple(self.sites)
        bad = [s for s in self.sites if s not in ACTIVATION_SITES]
        check(not bad, f"quantizer.activation.sites has unknown site(s) {bad}; known: {list(ACTIVATION_SITES)}")
        check(self.float_layers in FLOAT_LAYER_POLICIES,
              f"quantizer.activation.float_layers must be one of {FLOAT_LAYER_POLICIES}, got {self.float_layers!r}")
        if self.bits is not None:
            self.build()  # validates bits, mode, clip, momentum

    def build(self) -> ActivationQuantizer:
        return ActivationQuantizer(self.bits, self.symmetric, self.mode, self.clip, self.momentum)

    def active_sites(self) -> tuple[str, ...]:
        return () if self.bits is None else tuple(self.sites)


def as_activation_spec(spec: ActivationSpec | Mapping | None) -> ActivationSpec | None:
    return ActivationSpec(**spec) if isinstance(spec, Mapping) else spec


@dataclass
class QuantizationReport:
    quantized: dict[str, str] = field(default_factory=dict)  # name -> "role@bits"
    float_kept: list[str] = field(default_factory=list)
    attention_sites: list[str] = field(default_factory=list)
    activation_inputs: list[str] = field(default_factory=list)
    activation_skipped_float: list[str] = field(default_factory=list)


class QuantRecipe(Method):
    """Base recipe: subclasses implement ``weight_quantizer``."""

    activation: ActivationSpec | None = None
    enabled = True

    def weight_quantizer(self, target: Target, bits: int) -> WeightQuantizer:
        raise NotImplementedError

    def prepare(self, model: nn.Module, edit) -> None:
        self.report = report = QuantizationReport()
        if not self.enabled:
            return
        plan: dict[str, int | None] | None = edit.plan.get("bits")
        check(plan is not None, f"{self.label}: no bit plan (bit_assignment must prepare before the quantizer)")
        planned: list[tuple[Target, WeightQuantizer, int]] = []
        for target in edit.targets(*WEIGHT_ROLES):
            bits = None if target.role in CLASSIFIER_ROLES else plan.get(target.name)
            if bits is None:
                report.float_kept.append(target.name)
                continue
            quantizer = self.weight_quantizer(target, bits)
            quantizer.validate(target.module.weight, target.name)
            planned.append((target, quantizer, bits))
        for target, quantizer, bits in planned:  # everything validated: now change the model
            edit.add_weight_transform(target, quantizer)
            report.quantized[target.name] = f"{target.role}@{bits}"
        spec = self.activation
        if spec is None or spec.bits is None:
            return
        if "linear_input" in spec.sites:
            quantized = {t.name for t, _, _ in planned}
            for target in edit.targets(*WEIGHT_ROLES):
                if not isinstance(target.module, nn.Linear) or target.role in CLASSIFIER_ROLES:
                    continue
                if target.name in quantized or spec.float_layers == "quantize":
                    edit.add_input_transform(target, spec.build())
                    report.activation_inputs.append(target.name)
                else:
                    report.activation_skipped_float.append(target.name)
            if report.activation_skipped_float:
                log.info("quantizer: no input quantizer on %d Linear layer(s) bit_assignment leaves float (%s); "
                         "quantizer.activation.float_layers=quantize adds them", len(report.activation_skipped_float),
                         ", ".join(report.activation_skipped_float[:3]))
        active = [s for s in spec.active_sites() if s in ATTENTION_SITE_SLOTS]
        if active:
            for target, _ in edit.self_attention():
                for site in active:
                    edit.add_attention_transform(target, ATTENTION_SITE_SLOTS[site], spec.build())
                    report.attention_sites.append(f"{target.name}.{site}")

    def summary(self) -> dict[str, Any]:
        report = getattr(self, "report", None)
        if report is None or not self.enabled:
            return {}
        return {"quantized_modules": len(report.quantized), "float_modules": len(report.float_kept),
                "activation_inputs": len(report.activation_inputs),
                "activation_skipped_float_linears": len(report.activation_skipped_float),
                "attention_act_sites": len(report.attention_sites)}


@dataclass
class NoQuantization(QuantRecipe):
    """``quantizer=none``: full precision; the bit plan is ignored."""

    enabled = False


@dataclass
class UniformRecipe(QuantRecipe):
    """k-bit uniform weights (bits from ``bit_assignment``) with a chosen granularity.

    ``granularity`` applies to Linear weights (per_tensor, per_row, or ``group`` with
    ``n_groups`` blocks along ``group_axis``); embeddings use ``embedding_granularity``.
    """

    symmetric: bool = False
    granularity: str = "per_tensor"
    n_groups: int = 1
    group_axis: str = "output"
    embedding_granularity: str = "per_tensor"
    activation: ActivationSpec | dict | None = None

    def __post_init__(self):
        self.activation = as_activation_spec(self.activation)
        self._linear_granularity: Granularity = make_granularity(self.granularity, self.n_groups, self.group_axis)
        check(self.embedding_granularity in ("per_tensor", "per_row"),
              f"quantizer.embedding_granularity must be per_tensor or per_row, got {self.embedding_granularity!r}")
        self._embedding_granularity = make_granularity(self.embedding_granularity)

    def weight_quantizer(self, target: Target, bits: int) -> WeightQuantizer:
        granularity = self._embedding_granularity if target.role in EMBEDDING_ROLES else self._linear_granularity
        return UniformWeightQuantizer(bits, symmetric=self.symmetric, granularity=granularity)
