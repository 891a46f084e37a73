"""Effects: checks that prove a method option did something in a trained model.

A method card names its effect (``lowbit.algorithms.card``). The smoke test runs every option on
the tiny model and calls its effect; the pairwise test calls every chosen option's effect in every
combination it runs. An effect returns ``True`` when it verified something, ``None`` when it does
not apply in this combination (bits with ``quantizer=none``), and raises ``AssertionError`` with a
message when the option did not do what it says. An option that does nothing fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from lowbit.attention import HOOKS_ATTR
from lowbit.layers import lowbit_layers
from lowbit.methods import Method

Effect = Callable[["EffectContext"], "bool | None"]


@dataclass
class EffectContext:
    model: nn.Module  # the trained model
    metrics: dict[str, Any]  # the run summary (summary.json)
    methods: dict[str, Method] = field(default_factory=dict)

    def option(self, group: str) -> str:
        m = self.methods.get(group)
        return "" if m is None else m.option


def _slot_keys(module: nn.Module) -> list[str]:
    keys = []
    for attr in ("weight_transforms", "input_transforms", "output_transforms", "bias_transforms",
                 "query", "key", "value", "score_observers", "scores", "probs"):
        slot = getattr(module, attr, None)
        if isinstance(slot, nn.ModuleDict):
            keys += list(slot.keys())
    return keys


def changes_by(model: nn.Module, group: str) -> list[str]:
    """Modules where ``group`` left a transform, a replacement or an added module."""
    found = []
    for name, module in model.named_modules():
        if any(k == group or k.startswith(group + "_") for k in _slot_keys(module)):
            found.append(name)
        if getattr(module, "lowbit_owner", None) == group:
            found.append(name)
    extras = getattr(model, "lowbit_modules", None)
    if extras is not None and group in {m.lowbit_owner for m in extras.values() if hasattr(m, "lowbit_owner")}:
        found.append("lowbit_modules")
    return found


def nothing_from(group: str) -> Effect:
    """The ``none`` option: the group left nothing in the model."""

    def effect(ctx: EffectContext) -> bool:
        changed = changes_by(ctx.model, group)
        assert not changed, f"{group}=none changed {changed[:3]}"
        return True

    return effect


def quantized_layers(model: nn.Module):
    for name, layer in lowbit_layers(model):
        if layer.quantizer is not None:
            yield name, layer


def weights_on_grid(max_ranges: Callable[[str, Any], int | None] | None = None) -> Effect:
    """Every quantized weight equals its codes dequantized, codes within the grid, at most 2^k levels per range."""

    def effect(ctx: EffectContext) -> bool | None:
        layers = list(quantized_layers(ctx.model))
        if not layers:
            return None
        for name, layer in layers:
            with torch.no_grad():
                w = layer.effective_weight()
                qp = layer.weight_qparams()
                codes = qp.codes(w)
                assert int(codes.min()) >= qp.qmin and int(codes.max()) <= qp.qmax, f"{name}: codes off the grid"
                assert torch.allclose(qp.dequantize(codes), w, rtol=0, atol=1e-6 * float(w.abs().max()) + 1e-12), \
                    f"{name}: weight is not its dequantized codes"
                grouped = qp.granularity.to_groups(codes)
                levels = max(int(row.unique().numel()) for row in grouped)
                assert levels <= qp.qmax - qp.qmin + 1, f"{name}: {levels} levels at {qp.bits} bits"
                if max_ranges is not None:
                    expected = max_ranges(name, layer)
                    assert expected is None or qp.n_ranges == expected, f"{name}: {qp.n_ranges} ranges, expected {expected}"
        return True

    return effect


def ternary_weights(require_curvature: bool = False) -> Effect:
    """Every 2-bit weight takes the values {-α, 0, +α} per range; others lie on a symmetric grid."""
    grid = weights_on_grid()

    def effect(ctx: EffectContext) -> bool | None:
        if grid(ctx) is None:
            return None
        two_bit = [(n, layer) for n, layer in quantized_layers(ctx.model) if layer.quantizer.bits == 2]
        for name, layer in two_bit:
            qp = layer.weight_qparams()
            assert qp.kind == "ternary", f"{name}: 2-bit weight is {qp.kind}, not ternary"
            with torch.no_grad():
                grouped = qp.granularity.to_groups(layer.effective_weight())
                for row, alpha in zip(grouped, qp.scale):
                    assert set(row.unique().tolist()) <= {-float(alpha), 0.0, float(alpha)}, f"{name}: not ternary"
        for name, layer in quantized_layers(ctx.model):
            if layer.quantizer.bits > 2:
                assert layer.weight_qparams().symmetric, f"{name}: TernaryBERT's >2-bit weights are symmetric"
        if require_curvature and two_bit:
            assert any(getattr(layer.quantizer, "curvature", None) is not None for _, layer in two_bit), \
                "LAT never received Adam's curvature (it ran as TWN)"
        return True

    return effect


def bits_as_planned(expect: dict[str, Any] | None = None) -> Effect:
    """Every weight carries the bit-width the assignment planned for it (float where it planned None).

    ``expect``: summary values the option must produce (``{"layer_bits": "3,2"}``).
    """

    def effect(ctx: EffectContext) -> bool | None:
        method = ctx.methods.get("bit_assignment")
        if method is None or not getattr(ctx.methods.get("quantizer"), "enabled", False):
            return None  # nothing quantizes: bits cannot show
        assigned = getattr(method, "assigned", {})
        assert assigned, "bit_assignment planned nothing"
        layers = dict(lowbit_layers(ctx.model))
        for name, bits in assigned.items():
            q = layers[name].quantizer if name in layers else None
            got = None if q is None else q.bits
            assert got == bits, f"{name}: planned {bits} bits, has {got}"
        for key, value in (expect or {}).items():
            assert ctx.metrics.get(f"bit_assignment/{key}") == value, \
                f"bit_assignment/{key} = {ctx.metrics.get(f'bit_assignment/{key}')!r}, expected {value!r}"
        return True

    return effect


def loss_terms_logged(*terms: str) -> Effect:
    """The method's loss terms were computed (> 0) in training and the teacher stayed frozen."""

    def effect(ctx: EffectContext) -> bool:
        for term in terms:
            value = ctx.metrics.get(f"train/loss_{term}")
            assert value is not None and value > 0, f"train/loss_{term} not logged (got {value!r})"
        assert ctx.metrics.get("distillation/teacher_frozen") is True, "the teacher was trained or missing"
        return True

    return effect


def attention_hooks_present(model: nn.Module) -> int:
    return sum(1 for _, m in model.named_modules() if hasattr(m, HOOKS_ATTR))
