"""Functional API: ``quantize_(model, recipe, bits)`` (prepare) and ``convert_(model)``.

``quantize_`` runs the two methods a run would run (the bit assignment, then the recipe) on a
fresh ``ModelEditor``; layers already wrapped by another method (a pruning mask) keep their chain,
and the quantizer is added to it.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.edit import ModelEditor
from lowbit.layers import LowbitEmbedding, LowbitLinear, lowbit_layers
from lowbit.quant.bit_assignment import BitAssignment
from lowbit.quant.recipes import QuantizationReport, QuantRecipe
from lowbit.roles import set_submodule


def quantize_(model: nn.Module, recipe: QuantRecipe, bits: BitAssignment, purpose: str = "train") -> QuantizationReport:
    """Add fake-quant transforms to the model's Linear/Embedding layers, in place."""
    edit = ModelEditor(model, purpose)
    for group, method in (("bit_assignment", bits), ("quantizer", recipe)):
        method.group = method.group or group
        edit.group = group
        method.prepare(model, edit)
    return recipe.report


#: lowbit wrapper -> the float type ``convert_`` turns it back into
_FLOAT_OF = {LowbitLinear: nn.Linear, LowbitEmbedding: nn.Embedding}


@torch.no_grad()
def convert_(model: nn.Module) -> nn.Module:
    """Bake every weight chain into plain float modules (for eval / export to other tools).

    Activation, bias and output transforms go with the wrapper, so the converted model equals the
    fake-quant model only where weights alone were transformed.
    """
    for name, layer in list(lowbit_layers(model)):
        float_type = _FLOAT_OF[type(layer)]
        layer.eval()
        weight = layer.effective_weight().detach().clone()
        new = float_type.__new__(float_type)
        new.__dict__ = {k: v for k, v in layer.__dict__.items() if k not in ("_cache", "weight_frozen")}
        new._modules = {k: v for k, v in layer._modules.items() if not k.endswith("_transforms")}
        new._parameters = dict(layer._parameters)
        new.weight.data = weight
        set_submodule(model, name, new)
    return model
