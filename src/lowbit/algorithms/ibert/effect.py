"""Effects that prove ``approximation`` and ``quantizer=ibert`` options did something (method cards)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.algorithms import effects as E
from lowbit.algorithms.ibert.approximation import FloatGELUApproximation, IntGELU, IntLayerNorm, IntSoftmax
from lowbit.algorithms.ibert.recipe import FixedScaleQuantizer, IntBias
from lowbit.layers import lowbit_layers

OP_MODULES = {"gelu": (IntGELU, FloatGELUApproximation), "softmax": (IntSoftmax,), "layernorm": (IntLayerNorm,)}


def _on_grid(values: torch.Tensor, scale: torch.Tensor) -> bool:
    codes = values.double() / scale
    return bool(torch.allclose(codes, codes.round(), rtol=0, atol=1e-3))


def integer_ops(ctx: E.EffectContext) -> bool | None:
    """Every op the option replaces is replaced, its static input grid saw training data, and an integer op's
    output lies on its output grid (probed with a random input)."""
    method = ctx.methods.get("approximation")
    ops = getattr(method, "ops", None)
    if not ops:
        return None
    torch.manual_seed(0)
    for op, choice in ops.items():
        if choice == "exact":
            continue
        found = [m for m in ctx.model.modules() if isinstance(m, OP_MODULES[op])]
        assert found, f"approximation.{op}={choice}: no {op} module was replaced"
        assert ctx.metrics.get(f"approximation/replaced_{op}") == len(found), \
            f"approximation/replaced_{op}={ctx.metrics.get(f'approximation/replaced_{op}')!r}, found {len(found)}"
        for module in found:
            scale = getattr(module, "input_scale", None)
            if scale is not None:
                assert bool(scale.initialized), f"approximation.{op}: the input grid never saw a training batch"
        probe = found[0].eval()
        grid = getattr(probe, "input_scale", None)
        # probe inside the range the op's static grid learned (outside it inputs saturate, by design)
        r = 1.0 if grid is None else 0.9 * float(torch.maximum(grid.running_min.abs(), grid.running_max.abs()))
        with torch.no_grad():
            if isinstance(probe, IntSoftmax):
                out = probe((torch.rand(2, 2, 5, 5) * 2 - 1) * r)
                assert _on_grid(out, torch.tensor(2.0 ** -probe.output_bits)), "i-softmax output is off its 2^-8 grid"
                assert torch.allclose(out.sum(-1), torch.ones(()), atol=0.05), "i-softmax rows do not sum to ~1"
            elif isinstance(probe, IntGELU):
                x = (torch.rand(64) * 2 - 1) * r
                exact = nn.functional.gelu(x)
                assert (probe(x) - exact).abs().max() < 0.03 * max(r, 1.0), "i-GELU is far from GELU"
            elif isinstance(probe, FloatGELUApproximation):
                x = torch.randn(64)
                assert torch.equal(probe(x), probe.FUNCTIONS[probe.kind](x))
            elif isinstance(probe, IntLayerNorm):
                x = (torch.rand(3, probe.normalized_shape[0]) * 2 - 1) * r
                ref = nn.functional.layer_norm(x, probe.normalized_shape, probe.weight, probe.bias)
                assert (probe(x) - ref).abs().max() < 0.1 * (1 + probe.weight.abs().max()), "i-LayerNorm is far off"
    return True


def ibert_quantized(ctx: E.EffectContext) -> bool | None:
    """Weights on I-BERT's symmetric grids (per channel for Linear), biases on the S_w·S_x grid with 32-bit codes,
    softmax outputs on the 2^-8 grid."""
    if E.weights_on_grid()(ctx) is None:
        return None
    biased = 0
    for name, layer in lowbit_layers(ctx.model):
        qp = layer.weight_qparams()
        if qp is not None and isinstance(layer, nn.Linear):
            assert qp.symmetric and qp.n_ranges == layer.out_features, f"{name}: not symmetric per output channel"
        for t in layer.bias_transforms.values():
            if isinstance(t, IntBias):
                s_x = t.input_scale(layer)
                assert s_x is not None, f"{name}: int bias without a static input scale"
                with torch.no_grad():
                    bias = layer._bias()
                assert _on_grid(bias, qp.scale.double() * s_x.double()), f"{name}: bias is off the S_w·S_x grid"
                biased += 1
    assert biased > 0, "quantizer=ibert quantized no bias"
    probs = [m for m in ctx.model.modules() if isinstance(m, FixedScaleQuantizer)]
    assert probs, "quantizer=ibert left the softmax output float"
    p = torch.softmax(torch.randn(4, 7), -1)
    assert _on_grid(probs[0](p), torch.tensor(2.0 ** -8))
    return True


__all__ = ["ibert_quantized", "integer_ops"]
