"""The effect that proves ``quantizer=adaptivfloat`` did something (its method card)."""

from __future__ import annotations

import torch

from lowbit.algorithms import effects as E
from lowbit.algorithms.adaptivfloat.functional import adaptivfloat_values, exponent_bias
from lowbit.quant.functional import abs_max


def adaptivfloat_weights(ctx: E.EffectContext) -> bool | None:
    """Every quantized weight lies on the AdaptivFloat grid of its bits, exponent bits and bias, its bias puts its
    max |w| in the top binade, and its codes decode to it exactly."""
    layers = list(E.quantized_layers(ctx.model))
    if not layers:
        return None
    for name, layer in layers:
        with torch.no_grad():
            w = layer.effective_weight()
            qp = layer.weight_qparams()
        assert qp.kind == "adaptivfloat", f"{name}: weight is {qp.kind}, not AdaptivFloat"
        grouped = qp.granularity.to_groups(w)
        assert torch.equal(qp.exp_bias, exponent_bias(abs_max(grouped), qp.exp_bits)), \
            f"{name}: exponent bias does not put max|w| in the top binade"
        for row, bias in zip(grouped, qp.exp_bias.tolist()):
            grid = adaptivfloat_values(qp.bits, qp.exp_bits, bias)
            assert bool(torch.isin(row, grid).all()), f"{name}: a weight is off the {qp.bits}-bit AdaptivFloat grid"
        codes = qp.codes(w)
        assert int(codes.min()) >= qp.qmin and int(codes.max()) <= qp.qmax, f"{name}: codes off the grid"
        assert torch.equal(qp.dequantize(codes), w), f"{name}: weight is not its decoded codes"
    return True
