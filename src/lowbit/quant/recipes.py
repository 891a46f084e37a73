"""The ``quantizer`` config group: which quantizer a module gets at a given bit-width.

A recipe is a small dataclass with explicit fields (what the YAML option sets).
``weight_quantizer(target, bits)`` returns the module's weight quantizer;
``activation(site)`` returns an activation quantizer for a site or ``None``.
Sites: ``linear_input`` (input of every quantized Linear), ``query``, ``key``,
``value`` and ``attention_probs`` (inside self-attention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from lowbit.errors import check
from lowbit.quant.granularity import Granularity, make_granularity
from lowbit.quant.quantizers import ActivationQuantizer, UniformWeightQuantizer, WeightQuantizer
from lowbit.quant.targets import Target

ACTIVATION_SITES = ("linear_input", "query", "key", "value", "attention_probs")
EMBEDDING_ROLES = ("word_embedding", "position_embedding", "token_type_embedding")


@dataclass
class ActivationSpec:
    """Activation quantization settings (``quantizer.activation``)."""

    bits: int | None = 8
    symmetric: bool = True
    mode: str = "dynamic"
    clip: float | None = 2.5
    momentum: float = 0.99
    sites: Sequence[str] = ACTIVATION_SITES

    def __post_init__(self):
        self.sites = tuple(self.sites)
        bad = [s for s in self.sites if s not in ACTIVATION_SITES]
        check(not bad, f"quantizer.activation.sites has unknown site(s) {bad}; known: {list(ACTIVATION_SITES)}")
        if self.bits is not None:
            ActivationQuantizer(self.bits, self.symmetric, self.mode, self.clip, self.momentum)  # validates

    def build(self, site: str) -> ActivationQuantizer | None:
        if self.bits is None or site not in self.sites:
            return None
        return ActivationQuantizer(self.bits, self.symmetric, self.mode, self.clip, self.momentum)


def _activation(spec: ActivationSpec | Mapping | None) -> ActivationSpec | None:
    return ActivationSpec(**spec) if isinstance(spec, Mapping) else spec


class QuantRecipe:
    """Base recipe: subclasses implement ``weight_quantizer``."""

    activation: ActivationSpec | None = None
    enabled = True

    def weight_quantizer(self, target: Target, bits: int) -> WeightQuantizer:
        raise NotImplementedError

    def callbacks(self) -> list:
        """Lightning callbacks the quantizers need (e.g. LAT reads Adam's second moment)."""
        return []

    def activation_sites(self) -> tuple[str, ...]:
        spec = self.activation
        return () if spec is None or spec.bits is None else tuple(spec.sites)

    def build_activation(self, site: str) -> ActivationQuantizer | None:
        return self.activation.build(site) if self.activation is not None else None


@dataclass
class NoQuantization(QuantRecipe):
    """``quantizer=none``: full precision; bit assignment is ignored."""

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
        self.activation = _activation(self.activation)
        self._linear_granularity: Granularity = make_granularity(self.granularity, self.n_groups, self.group_axis)
        check(self.embedding_granularity in ("per_tensor", "per_row"),
              f"quantizer.embedding_granularity must be per_tensor or per_row, got {self.embedding_granularity!r}")
        self._embedding_granularity = make_granularity(self.embedding_granularity)

    def weight_quantizer(self, target: Target, bits: int) -> WeightQuantizer:
        granularity = self._embedding_granularity if target.role in EMBEDDING_ROLES else self._linear_granularity
        return UniformWeightQuantizer(bits, symmetric=self.symmetric, granularity=granularity)
