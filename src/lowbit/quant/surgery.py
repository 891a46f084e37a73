"""Model surgery: ``quantize_(model, recipe, bits)`` (prepare) and ``convert_(model)``.

Replacement goes through ``QUANT_LAYERS``, keyed by the exact float module type, so a
new layer type is one registration. The classifier is never quantized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from lowbit.quant.attention import attention_hooks, enable_lowbit_attention
from lowbit.quant.bit_assignment import PerModuleBits
from lowbit.quant.layers import QuantEmbedding, QuantLinear
from lowbit.quant.recipes import QuantRecipe
from lowbit.quant.targets import Target, find_self_attention, find_targets, set_submodule
from lowbit.registry import Registry

#: float module type -> builder(module, target, recipe, bits) -> fake-quant module
QUANT_LAYERS: Registry[Callable[[nn.Module, Target, QuantRecipe, int], nn.Module]] = Registry("quantizable layer type")


@QUANT_LAYERS.register(nn.Linear)
def _quant_linear(module: nn.Linear, target: Target, recipe: QuantRecipe, bits: int) -> nn.Module:
    return QuantLinear.from_linear(module, recipe.weight_quantizer(target, bits),
                                   recipe.build_activation("linear_input"))


@QUANT_LAYERS.register(nn.Embedding)
def _quant_embedding(module: nn.Embedding, target: Target, recipe: QuantRecipe, bits: int) -> nn.Module:
    return QuantEmbedding.from_embedding(module, recipe.weight_quantizer(target, bits))


#: float type of each fake-quant type, for convert_
_FLOAT_OF = {QuantLinear: nn.Linear, QuantEmbedding: nn.Embedding}


@dataclass
class QuantizationReport:
    quantized: dict[str, str] = field(default_factory=dict)  # name -> "role@bits"
    float_kept: list[str] = field(default_factory=list)
    attention_sites: list[str] = field(default_factory=list)


def quantize_(model: nn.Module, recipe: QuantRecipe, bits: PerModuleBits) -> QuantizationReport:
    """Replace the model's Linear/Embedding modules by fake-quant versions, in place."""
    report = QuantizationReport()
    if not recipe.enabled:
        return report
    planned = []
    for target in find_targets(model):
        b = None if target.role == "classifier" else bits.bits_for(target)
        if b is None:
            report.float_kept.append(target.name)
            continue
        new = QUANT_LAYERS.get(type(target.module))(target.module, target, recipe, b)
        new.weight_quantizer.validate(target.module.weight, target.name)
        planned.append((target, new, b))
    for target, new, b in planned:  # validate everything before changing anything
        set_submodule(model, target.name, new)
        report.quantized[target.name] = f"{target.role}@{b}"
    _quantize_attention(model, recipe, report)
    return report


def _quantize_attention(model: nn.Module, recipe: QuantRecipe, report: QuantizationReport) -> None:
    """Q/K/V/probability quantizers into each self-attention's hooks (one fresh quantizer per site)."""
    sites = {"query": "query_quantizer", "key": "key_quantizer", "value": "value_quantizer",
             "attention_probs": "probs_quantizer"}
    active = [site for site in sites if site in recipe.activation_sites()]
    if not active:
        return
    for name, module in find_self_attention(model):
        hooks = attention_hooks(module)
        for site in active:
            setattr(hooks, sites[site], recipe.build_activation(site))
            report.attention_sites.append(f"{name}.{site}")
    enable_lowbit_attention(model)


@torch.no_grad()
def convert_(model: nn.Module) -> nn.Module:
    """Bake fake-quantized weights into plain float modules (for eval/export).

    Activation quantizers are dropped with the wrapper, so the converted model equals
    the fake-quant model only for weight-only quantization.
    """
    for name, module in list(model.named_modules()):
        float_type = _FLOAT_OF.get(type(module))
        if float_type is None:
            continue
        module.eval()
        module.weight.data = module.weight_quantizer(module.weight).detach()
        new = float_type.__new__(float_type)
        new.__dict__ = {k: v for k, v in module.__dict__.items() if k != "_cache"}
        new._modules = {}
        set_submodule(model, name, new)
    return model
