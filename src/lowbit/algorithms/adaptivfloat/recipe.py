"""``quantizer=adaptivfloat``: AdaptivFloat weights (bits from ``bit_assignment``), optional AdaptivFloat activations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from lowbit.algorithms.adaptivfloat import functional as AF
from lowbit.algorithms.adaptivfloat.quantizer import AdaptivFloatActivationQuantizer, AdaptivFloatWeightQuantizer
from lowbit.errors import LowbitConfigError, check
from lowbit.quant.bit_assignment import BitAssignment, LayerwiseBits, PerModuleBits
from lowbit.quant.granularity import make_granularity
from lowbit.quant.quantizers import WeightQuantizer
from lowbit.quant.recipes import ActivationSpec, QuantRecipe
from lowbit.roles import Target

ACTIVATION_FORMATS = ("adaptivfloat", "uniform")
GRANULARITIES = ("per_tensor", "per_row")
#: backends that run integer codes on a uniform grid: AdaptivFloat codes are floating point
INTEGER_BACKENDS = ("int8_cpu", "int8_ort")


@dataclass
class AdaptivFloatActivationSpec(ActivationSpec):
    """``quantizer.activation`` with a ``format``: ``adaptivfloat`` (bias from each forward's max, ``exp_bits``)
    or ``uniform`` (lowbit's uniform activation quantizer, every key as for the other recipes)."""

    format: str = "adaptivfloat"
    exp_bits: int = 3
    clip: float | None = None  # the bias follows the max: no clip unless asked

    def __post_init__(self):
        check(self.format in ACTIVATION_FORMATS,
              f"quantizer.activation.format must be one of {ACTIVATION_FORMATS}, got {self.format!r}")
        if self.format == "adaptivfloat" and self.bits is not None:
            # the bias follows each forward's max: there is no static range and the grid is symmetric
            check(self.mode == "dynamic", f"quantizer.activation.mode={self.mode!r} needs "
                                          "quantizer.activation.format=uniform (AdaptivFloat activations are dynamic)")
            check(self.symmetric, "quantizer.activation.symmetric=false needs quantizer.activation.format=uniform "
                                  "(AdaptivFloat is symmetric)")
        super().__post_init__()

    def build(self) -> nn.Module:
        if self.format == "uniform":
            return super().build()
        return AdaptivFloatActivationQuantizer(self.bits, self.exp_bits, self.clip)


def _activation_spec(spec: ActivationSpec | Mapping | None) -> ActivationSpec | None:
    return AdaptivFloatActivationSpec(**spec) if isinstance(spec, Mapping) else spec


def _planned_weight_bits(assignment: BitAssignment) -> list[tuple[str, int]]:
    """(option, bits) of the weights every model has: encoder Linears and the word embedding."""
    if isinstance(assignment, LayerwiseBits):
        planned = [("layer_bits", b) for b in assignment.layer_assignment()]
    elif isinstance(assignment, PerModuleBits):
        planned = [("attention", assignment.attention), ("ffn", assignment.ffn)]
    else:
        return []
    return [(o, b) for o, b in [*planned, ("word_embedding", assignment.word_embedding)] if b is not None]


@dataclass
class AdaptivFloatRecipe(QuantRecipe):
    """AdaptivFloat weights: ``bits`` from ``bit_assignment`` (4 to 8), ``exp_bits`` exponent bits, the exponent
    bias per tensor (``granularity=per_row``: per row) from the weight's max |w|. Activations: see
    ``AdaptivFloatActivationSpec`` (null: float)."""

    exp_bits: int = 3
    granularity: str = "per_tensor"
    activation: ActivationSpec | dict | None = None

    def __post_init__(self):
        check(isinstance(self.exp_bits, int) and not isinstance(self.exp_bits, bool)
              and 1 <= self.exp_bits <= AF.MAX_BITS - 1,
              f"quantizer.exp_bits must be an integer in [1, {AF.MAX_BITS - 1}], got {self.exp_bits!r}")
        check(self.granularity in GRANULARITIES,
              f"quantizer.granularity must be one of {GRANULARITIES} for AdaptivFloat, got {self.granularity!r}")
        self.activation = _activation_spec(self.activation)

    def bits_range(self) -> tuple[int, int]:
        """The weight bit widths this recipe takes: at least 4, and room for the sign and ``exp_bits``."""
        return max(AF.MIN_BITS, self.exp_bits + 1), AF.MAX_BITS

    def _bits_problem(self, bits: int) -> str | None:
        low, high = self.bits_range()
        if low <= bits <= high:
            return None
        return f"AdaptivFloat with quantizer.exp_bits={self.exp_bits} takes {low} to {high} bits per weight"

    def incompatible_with(self, group: str, other) -> str | None:
        if group != "bit_assignment" or not isinstance(other, BitAssignment):
            return None
        for option, bits in _planned_weight_bits(other):
            problem = self._bits_problem(bits)
            if problem:
                return f"bit_assignment.{option} plans {bits}-bit weights; {problem}"
        return None

    def weight_quantizer(self, target: Target, bits: int) -> WeightQuantizer:
        problem = self._bits_problem(bits)
        check(problem is None, f"quantizer=adaptivfloat: bit_assignment gives {target.name} {bits} bits; {problem}")
        return AdaptivFloatWeightQuantizer(bits, self.exp_bits, make_granularity(self.granularity))

    def convert(self, model: nn.Module, backend: str) -> nn.Module:
        if backend in INTEGER_BACKENDS and self.enabled:
            raise LowbitConfigError(f"deploy backend {backend} cannot run quantizer=adaptivfloat: AdaptivFloat weights "
                                    "are floating-point codes (sign, exponent, mantissa), not integers on a uniform grid")
        return model
