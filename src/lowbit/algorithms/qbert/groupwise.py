"""Q-BERT group-wise quantization (``quantizer=groupwise``).

Each attention head's slice of W_q, W_k, W_v (its output rows) and of W_o (its *input*
columns) is a group; inside a head, consecutive output rows form sub-groups with their own
range. ``n_groups`` is the number of ranges per matrix (the paper's 1, 12, 48, 96, 128, ...
for BERT-base); FFN and pooler matrices use ``n_groups`` blocks of consecutive output rows.
``axis="input"`` is the official code's variant: ``n_groups`` blocks of consecutive input
columns in every matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import check
from lowbit.quant.granularity import BlockGroup, Granularity, Group, make_granularity
from lowbit.quant.quantizers import UniformWeightQuantizer, WeightQuantizer
from lowbit.quant.recipes import ActivationSpec, QuantRecipe, as_activation_spec
from lowbit.roles import EMBEDDING_ROLES, Target


def output_groups(n_groups: int, num_heads: int, heads_on_input: bool) -> Granularity:
    """Paper layout. W_o with ``n_groups`` a multiple of the head count: heads along the input
    columns x ``n_groups / heads`` row sub-groups. Otherwise (and for every other matrix)
    ``n_groups`` blocks of consecutive output rows, which for W_q/W_k/W_v are head-aligned
    whenever ``n_groups`` is a multiple of the head count (a head's rows are contiguous)."""
    if heads_on_input and n_groups % num_heads == 0:
        return BlockGroup(row_blocks=n_groups // num_heads, col_blocks=num_heads)
    return Group(n_groups=n_groups, axis="output")


@dataclass
class GroupwiseRecipe(QuantRecipe):
    """Asymmetric (min/max, Q-BERT) or symmetric k-bit weights with head-aligned group ranges.

    Set exactly one of ``n_groups`` (ranges per matrix) or ``groups_per_head``
    (``n_groups = groups_per_head * num_attention_heads``, which fits any model size).
    """

    n_groups: int | None = None
    groups_per_head: int | None = 1
    num_attention_heads: int = 12
    axis: str = "output"
    symmetric: bool = False
    embedding_granularity: str = "per_tensor"
    activation: ActivationSpec | dict | None = None

    def __post_init__(self):
        self.activation = as_activation_spec(self.activation)
        check((self.n_groups is None) != (self.groups_per_head is None),
              f"quantizer: set exactly one of n_groups and groups_per_head, got n_groups={self.n_groups!r}, "
              f"groups_per_head={self.groups_per_head!r}")
        for option in ("n_groups", "groups_per_head", "num_attention_heads"):
            value = getattr(self, option)
            check(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                  f"quantizer.{option} must be a positive integer, got {value!r}")
        check(self.axis in ("output", "input"), f"quantizer.axis must be 'output' or 'input', got {self.axis!r}")
        check(self.embedding_granularity in ("per_tensor", "per_row"),
              f"quantizer.embedding_granularity must be per_tensor or per_row, got {self.embedding_granularity!r}")
        self._embedding_granularity = make_granularity(self.embedding_granularity)

    @property
    def groups(self) -> int:
        return self.n_groups if self.n_groups is not None else self.groups_per_head * self.num_attention_heads

    def granularity_for(self, target: Target) -> Granularity:
        if target.role in EMBEDDING_ROLES:
            return self._embedding_granularity
        if self.axis == "input":
            return Group(n_groups=self.groups, axis="input")
        heads_on_input = target.role == "attention.output"
        return output_groups(self.groups, self.num_attention_heads, heads_on_input)

    def weight_quantizer(self, target: Target, bits: int) -> WeightQuantizer:
        return UniformWeightQuantizer(bits, symmetric=self.symmetric, granularity=self.granularity_for(target))
