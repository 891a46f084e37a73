"""The effect that proves ``early_exit=entropy`` did something (its method card's check)."""

from __future__ import annotations

from itertools import pairwise

from lowbit.algorithms.effects import EffectContext
from lowbit.roles import find_targets


def offramps_trained(ctx: EffectContext) -> bool:
    """An off-ramp after every layer but the last, trained away from its initial weights; off-ramp metrics
    logged; the summary holds a whole threshold curve that starts with no exit (saving 0 at S = 0) and
    whose saving never falls as the threshold rises."""
    ramps = [t for t in find_targets(ctx.model, "exit") if t.layer is not None]
    layers = int(ctx.model.config.num_hidden_layers)
    assert len(ramps) == layers - 1, f"expected {layers - 1} off-ramps, found {len(ramps)}"
    assert ctx.metrics.get("early_exit/offramps_trained") is True, "the off-ramps never trained"
    assert any(k.startswith("val/exit/layer_1_") for k in ctx.metrics), "off-ramp metrics were not logged"
    curve = ctx.metrics.get("early_exit/curve")
    assert isinstance(curve, list) and len(curve) >= 2, "no threshold curve in the summary"
    assert curve[0]["threshold"] == 0.0 and curve[0]["expected_saving"] == 0.0, f"S=0 must not exit: {curve[0]}"
    savings = [row["expected_saving"] for row in curve]
    assert all(b >= a for a, b in pairwise(savings)), "expected saving fell as the threshold rose"
    return True


def mean_pooled_offramps_trained(ctx: EffectContext) -> bool:
    """``offramps_trained``, and every off-ramp reads the mean of the unpadded tokens."""
    offramps_trained(ctx)
    pooling = {t.module.pooling for t in find_targets(ctx.model, "exit") if t.layer is not None}
    assert pooling == {"mean"}, f"off-ramps pool with {sorted(pooling)}, not mean"
    return True
