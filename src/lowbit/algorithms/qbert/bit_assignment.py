"""Q-BERT mixed precision: bits per encoder layer (``bit_assignment=hessian`` / ``per_layer``).

``HessianBits`` orders the encoder layers by Hessian sensitivity (the JSON written by
``python -m lowbit.hessian``, or inline values) and gives more bits to more sensitive layers
under a budget (average weight bits, or encoder weight megabytes): every layer starts at the
lowest choice and layers are raised one level at a time, most sensitive first, while the budget
holds (stopping at the first that does not fit keeps bits non-increasing in sensitivity).
``PerLayerBits`` takes the per-layer bits directly (an Optuna search space) with an optional
size constraint. Both are ``LayerwiseBits`` (``lowbit.quant.bit_assignment``): the common keys
(``bits``, embeddings, pooler) are validated there, once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lowbit.errors import check
from lowbit.quant.bit_assignment import BitAssignment, LayerwiseBits, check_bits

BUDGET_KINDS = ("average_bits", "size_mb")
METRICS = ("sensitivity", "mean", "summed")


def load_layer_sensitivity(path: str | Path, metric: str) -> tuple[list[float], list[int]]:
    """Per-layer (sensitivity, weight count) from a ``lowbit.hessian`` JSON, ordered by layer."""
    p = Path(path)
    check(p.is_file(), f"bit_assignment.sensitivity_file={str(path)!r} does not exist "
                       f"(write it with: python -m lowbit.hessian ... checkpoint=<ckpt>)")
    blocks = json.loads(p.read_text()).get("blocks", {})
    layers = sorted((b for b in blocks.values() if b.get("kind") == "layer"), key=lambda b: b["layer"])
    check(layers and [b["layer"] for b in layers] == list(range(len(layers))),
          f"bit_assignment.sensitivity_file={str(path)!r} has no complete set of 'layer' blocks")
    check(all(b.get(metric) is not None for b in layers),
          f"bit_assignment.metric={metric!r} is missing from {str(path)!r} (was it computed?)")
    return [float(b[metric]) for b in layers], [int(b["numel"]) for b in layers]


def assign_layer_bits(sensitivity: Sequence[float], numel: Sequence[int], choices: Sequence[int],
                      budget_kind: str, budget: float) -> list[int]:
    """Bits per layer: more to more sensitive layers, within the budget."""
    check(budget_kind in BUDGET_KINDS, f"bit_assignment.budget_kind must be one of {BUDGET_KINDS}, got {budget_kind!r}")
    levels = sorted(set(choices))

    def cost(bits: list[int]) -> float:
        weighted = sum(b * n for b, n in zip(bits, numel))
        return weighted / sum(numel) if budget_kind == "average_bits" else weighted / 8 / 1e6

    bits = [levels[0]] * len(sensitivity)
    check(cost(bits) <= budget + 1e-9, f"bit_assignment.budget={budget} is below the smallest assignment "
                                       f"({budget_kind}={cost(bits):.4g} with every layer at {levels[0]} bits)")
    order = sorted(range(len(sensitivity)), key=lambda i: -sensitivity[i])
    for level in levels[1:]:
        for i in order:
            trial = bits.copy()
            trial[i] = level
            if cost(trial) > budget + 1e-9:
                return bits
            bits = trial
    return bits


@dataclass
class HessianBits(LayerwiseBits):
    """Hessian-ranked mixed precision (Q-BERT-MP). Set ``sensitivity_file`` or ``sensitivities``."""

    sensitivity_file: str | None = None
    sensitivities: list[float] | None = None  # inline per-layer values (equal layer sizes assumed)
    metric: str = "sensitivity"  # sensitivity (mean+std, paper) | mean | summed (code)
    bit_choices: list[int] = field(default_factory=lambda: [2, 3])
    budget_kind: str = "average_bits"
    budget: float = 2.5
    layer_bits: list[int] = field(init=False, default_factory=list)
    layer_sensitivity: list[float] = field(init=False, default_factory=list)  # what the layers were ranked by

    def validate(self) -> None:
        check(self.metric in METRICS, f"bit_assignment.metric must be one of {METRICS}, got {self.metric!r}")
        check(self.budget_kind in BUDGET_KINDS,
              f"bit_assignment.budget_kind must be one of {BUDGET_KINDS}, got {self.budget_kind!r}")
        check(len(list(self.bit_choices or [])) >= 1, "bit_assignment.bit_choices must list at least one bit-width")
        for b in self.bit_choices:
            check_bits("bit_choices", b)
        check((self.sensitivity_file is None) != (self.sensitivities is None),
              "bit_assignment: set exactly one of sensitivity_file and sensitivities")
        if self.sensitivities is not None:
            sens, numel = [float(s) for s in self.sensitivities], [1] * len(self.sensitivities)
        else:
            sens, numel = load_layer_sensitivity(self.sensitivity_file, self.metric)
        self.layer_sensitivity = sens
        self.layer_bits = assign_layer_bits(sens, numel, list(self.bit_choices), self.budget_kind, self.budget)

    def layer_assignment(self) -> list[int | None]:
        return list(self.layer_bits)

    def callbacks(self) -> list:
        from lowbit.wandb_charts import ChartsAtTrainStart, layer_bits_charts

        return [ChartsAtTrainStart(lambda: layer_bits_charts(self.layer_bits, self.layer_sensitivity, self.metric,
                                                             self.sensitivity_file))]

    def frozen_config(self, cfg: dict) -> dict:
        """A deployed model replays the assignment, not the Hessian file (which may be gone)."""
        keep = {k: cfg[k] for k in BitAssignment.BIT_FIELDS if k in cfg}
        return {"_target_": "lowbit.algorithms.qbert.PerLayerBits", **keep, "layer_bits": list(self.layer_bits)}


@dataclass
class PerLayerBits(LayerwiseBits):
    """Bits per encoder layer (Linear weights of attention and FFN), e.g. set per layer by a sweeper.

    ``max_average_bits`` is a size constraint: an assignment above it stops the run with a config
    error (a failed trial in a sweep), so a sweep only explores models of at most that size.
    """

    layer_bits: list[int | None] = field(default_factory=lambda: [8] * 6)
    max_average_bits: float | None = None

    def validate(self) -> None:
        self.layer_bits = list(self.layer_bits)
        check(len(self.layer_bits) >= 1, "bit_assignment.layer_bits must list one entry per encoder layer")
        for b in self.layer_bits:
            check_bits("layer_bits", b)
        if self.max_average_bits is not None:
            avg = self.average_linear_bits()
            check(avg <= self.max_average_bits, f"bit_assignment.layer_bits {self.layer_bits} average {avg:.3g} bits, "
                                                f"above bit_assignment.max_average_bits={self.max_average_bits}")

    def layer_assignment(self) -> list[int | None]:
        return list(self.layer_bits)

    def callbacks(self) -> list:
        from lowbit.wandb_charts import ChartsAtTrainStart, layer_bits_charts

        return [ChartsAtTrainStart(lambda: layer_bits_charts(self.layer_bits))]
