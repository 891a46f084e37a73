"""The ``bit_assignment`` config group: how many bits each quantizable module gets.

``None`` means "keep this module in float". The quantizer recipe decides *how* a
module is quantized at that bit-width.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import check
from lowbit.quant.targets import Target

_MIN_BITS, _MAX_BITS = 2, 8


def _check(option: str, bits: int | None) -> None:
    check(bits is None or (isinstance(bits, int) and not isinstance(bits, bool) and _MIN_BITS <= bits <= _MAX_BITS),
          f"bit_assignment.{option} must be an integer in [{_MIN_BITS}, {_MAX_BITS}] or null, got {bits!r}")


@dataclass
class PerModuleBits:
    """Separate bits for each module role (Q-BERT Table 3). The classifier stays float."""

    attention: int | None = 8
    ffn: int | None = 8
    word_embedding: int | None = 8
    position_embedding: int | None = None
    token_type_embedding: int | None = None
    embedding_projection: int | None = 8
    pooler: int | None = 8

    def __post_init__(self):
        for option, bits in vars(self).items():
            _check(option, bits)

    def bits_for(self, target: Target) -> int | None:
        return getattr(self, target.role, None)

    def average_linear_bits(self) -> float:
        used = [b for b in (self.attention, self.ffn) if b is not None]
        return sum(used) / len(used) if used else 32.0

    def describe(self) -> dict[str, int | str | None]:
        """The bits chosen, for the run summary (null = float)."""
        return dict(vars(self))


def uniform_bits(bits: int, word_embedding_bits: int | None = None, position_embedding_bits: int | None = None,
                 token_type_embedding_bits: int | None = None) -> PerModuleBits:
    """One bit-width for every encoder/pooler Linear; embeddings set separately."""
    _check("bits", bits)
    return PerModuleBits(attention=bits, ffn=bits, pooler=bits, embedding_projection=bits,
                         word_embedding=word_embedding_bits, position_embedding=position_embedding_bits,
                         token_type_embedding=token_type_embedding_bits)
