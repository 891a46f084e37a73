"""Which elements of a weight share one quantization range (scale / alpha).

Small frozen dataclasses in the torchao style. Every granularity reshapes a 2-D
weight ``[out_features, in_features]`` into ``[n_groups, group_numel]`` so that a
quantizer computes one range per row of the view. ``axis`` is explicit because
Q-BERT's paper groups consecutive *output* rows while its code groups along the
*input* axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from lowbit.errors import check

Axis = Literal["output", "input"]


@dataclass(frozen=True)
class PerTensor:
    """One range for the whole tensor."""

    #: quantizing any subset of rows equals slicing the quantized tensor
    row_separable: ClassVar[bool] = False

    def validate(self, shape: torch.Size, name: str = "weight") -> None:
        """Raise LowbitConfigError if this granularity cannot apply to a weight of ``shape``."""

    def groups(self, weight: torch.Tensor) -> int:
        return 1

    def to_groups(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(1, -1)

    def from_groups(self, grouped: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return grouped.reshape(shape)


@dataclass(frozen=True)
class PerRow:
    """One range per output row (per output channel; per token for embeddings)."""

    row_separable: ClassVar[bool] = True

    def validate(self, shape: torch.Size, name: str = "weight") -> None:
        pass

    def groups(self, weight: torch.Tensor) -> int:
        return weight.shape[0]

    def to_groups(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(weight.shape[0], -1)

    def from_groups(self, grouped: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return grouped.reshape(shape)


@dataclass(frozen=True)
class Group:
    """``n_groups`` contiguous blocks along ``axis``, each with its own range.

    ``axis="output"`` splits rows (out_features) into blocks of
    ``out_features / n_groups`` consecutive rows; ``axis="input"`` splits columns.
    """

    n_groups: int
    axis: Axis = "output"
    row_separable: ClassVar[bool] = False

    def __post_init__(self):
        check(isinstance(self.n_groups, int) and self.n_groups >= 1,
              f"quantizer.n_groups must be a positive integer, got {self.n_groups!r}")
        check(self.axis in ("output", "input"),
              f"quantizer.group_axis must be 'output' or 'input', got {self.axis!r}")

    def _dim(self) -> int:
        return 0 if self.axis == "output" else 1

    def validate(self, shape: torch.Size, name: str = "weight") -> None:
        size = shape[self._dim()]
        check(len(shape) == 2 and size % self.n_groups == 0,
              f"quantizer.n_groups={self.n_groups} does not divide the {self.axis} axis "
              f"(size {size}) of {name} with shape {tuple(shape)}")

    def groups(self, weight: torch.Tensor) -> int:
        return self.n_groups

    def to_groups(self, weight: torch.Tensor) -> torch.Tensor:
        out_f, in_f = weight.shape
        if self.axis == "output":
            return weight.reshape(self.n_groups, -1)  # rows are contiguous in memory
        # [out, G, in/G] -> [G, out, in/G]
        return weight.reshape(out_f, self.n_groups, in_f // self.n_groups).transpose(0, 1).reshape(self.n_groups, -1)

    def from_groups(self, grouped: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        out_f, in_f = shape
        if self.axis == "output":
            return grouped.reshape(shape)
        return grouped.reshape(self.n_groups, out_f, in_f // self.n_groups).transpose(0, 1).reshape(shape)


Granularity = PerTensor | PerRow | Group


def make_granularity(name: str, n_groups: int = 1, axis: Axis = "output") -> Granularity:
    """Build a granularity from the flat config fields ``granularity``/``n_groups``/``group_axis``."""
    if name == "per_tensor":
        return PerTensor()
    if name == "per_row":
        return PerRow()
    if name == "group":
        return Group(n_groups=n_groups, axis=axis)
    from lowbit.errors import LowbitConfigError

    raise LowbitConfigError(
        f"quantizer.granularity must be one of per_tensor, per_row, group; got {name!r}")


@dataclass(frozen=True)
class BlockGroup(Group):
    """A ``row_blocks × col_blocks`` tiling of the weight; each rectangular block has its own range.

    Q-BERT's head-aligned groups: W_q/W_k/W_v split their output rows (``col_blocks=1``), while
    W_o's head slices are its *input* columns (``col_blocks=num_heads``), with consecutive output
    rows as sub-groups inside each head (``row_blocks``). Block ``(r, c)`` is group ``r·col_blocks + c``.
    A subclass of ``Group`` so quantizers validate it like any group granularity.
    """

    n_groups: int = 1  # derived: row_blocks * col_blocks (set in __post_init__)
    axis: Axis = "output"
    row_blocks: int = 1
    col_blocks: int = 1

    def __post_init__(self):
        for option, value in (("row_blocks", self.row_blocks), ("col_blocks", self.col_blocks)):
            check(isinstance(value, int) and value >= 1, f"quantizer.{option} must be a positive integer, got {value!r}")
        object.__setattr__(self, "n_groups", self.row_blocks * self.col_blocks)

    def validate(self, shape: torch.Size, name: str = "weight") -> None:
        check(len(shape) == 2 and shape[0] % self.row_blocks == 0 and shape[1] % self.col_blocks == 0,
              f"quantizer.n_groups: {self.row_blocks} row block(s) x {self.col_blocks} column block(s) do not tile "
              f"{name} with shape {tuple(shape)}")

    def to_groups(self, weight: torch.Tensor) -> torch.Tensor:
        out_f, in_f = weight.shape
        r, c = self.row_blocks, self.col_blocks
        # [r, out/r, c, in/c] -> [r, c, out/r, in/c]: one row of the view per block
        return weight.reshape(r, out_f // r, c, in_f // c).permute(0, 2, 1, 3).reshape(r * c, -1)

    def from_groups(self, grouped: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        out_f, in_f = shape
        r, c = self.row_blocks, self.col_blocks
        return grouped.reshape(r, c, out_f // r, in_f // c).permute(0, 2, 1, 3).reshape(shape)
