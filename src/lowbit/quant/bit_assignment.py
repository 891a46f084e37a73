"""The ``bit_assignment`` config group: how many bits each quantizable weight gets.

A bit assignment is an ordinary method: its ``prepare`` writes the plan ``{module name: bits}``
(``None`` = keep float) into ``edit.plan["bits"]``, and the quantizer (which prepares after it)
decides *how* each weight is quantized at that bit-width. The classifier is never planned.

Every option accepts the same common keys, so switching ``bit_assignment=...`` on top of any
experiment works: ``bits`` (every quantizable weight a more specific key does not set),
``word_embedding``, ``position_embedding``, ``token_type_embedding`` (float unless set),
``embedding_projection`` (ALBERT), ``pooler`` and ``exit_pooler`` (early-exit off-ramps' pooler Linears;
default: the pooler's bits — off-ramps are quantized like the final head). ``PerModuleBits`` (``uniform``, ``per_module``,
``w2e2``, ...) adds ``attention`` and ``ffn``; layer-wise options (Q-BERT's ``per_layer`` and
``hessian``, in ``lowbit.algorithms.qbert``) give the encoder layers their bits instead. All values
are validated once, here, when the option is built.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from lowbit.errors import check
from lowbit.methods import Method
from lowbit.roles import CLASSIFIER_ROLES, ENCODER_LINEAR_ROLES, WEIGHT_ROLES, Target, num_layers

MIN_BITS, MAX_BITS = 2, 8


class _Inherit:
    """Default of a per-role key: the value of ``bits``."""

    def __repr__(self) -> str:
        return "<same as bits>"


INHERIT: Any = _Inherit()


class _SameAsPooler:
    """Default of ``exit_pooler``: the value of ``pooler``."""

    def __repr__(self) -> str:
        return "<same as pooler>"


SAME_AS_POOLER: Any = _SameAsPooler()


def check_bits(option: str, bits: Any) -> None:
    check(bits is None or (isinstance(bits, int) and not isinstance(bits, bool) and MIN_BITS <= bits <= MAX_BITS),
          f"bit_assignment.{option} must be an integer in [{MIN_BITS}, {MAX_BITS}] or null, got {bits!r}")


@dataclass
class BitAssignment(Method):
    """Core base: the common keys and the plan. Subclasses decide the encoder Linear weights."""

    bits: int | None = 8
    word_embedding: int | None = INHERIT
    position_embedding: int | None = None
    token_type_embedding: int | None = None
    embedding_projection: int | None = INHERIT
    pooler: int | None = INHERIT
    exit_pooler: int | None = SAME_AS_POOLER

    #: the fields that hold one bit-width each (subclasses extend)
    BIT_FIELDS: ClassVar[tuple[str, ...]] = ("bits", "word_embedding", "position_embedding", "token_type_embedding",
                                             "embedding_projection", "pooler", "exit_pooler")

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) is INHERIT:
                setattr(self, f.name, self.bits)
        if self.exit_pooler is SAME_AS_POOLER:
            self.exit_pooler = self.pooler
        for option in self.BIT_FIELDS:
            check_bits(option, getattr(self, option))
        self.validate()
        self.assigned: dict[str, int | None] = {}

    def validate(self) -> None:
        """Subclass checks beyond the bit fields (called once, from ``__post_init__``)."""

    def encoder_bits(self, target: Target) -> int | None:
        raise NotImplementedError

    def check_model(self, model) -> None:
        """Raise LowbitConfigError if this assignment does not fit ``model`` (e.g. layer count)."""

    def bits_for(self, target: Target) -> int | None:
        if target.role in CLASSIFIER_ROLES:
            return None
        if target.group in ENCODER_LINEAR_ROLES:
            return self.encoder_bits(target)
        return getattr(self, target.group)

    def prepare(self, model, edit) -> None:
        self.check_model(model)
        self.assigned = {t.name: self.bits_for(t) for t in edit.targets(*WEIGHT_ROLES)}
        edit.plan["bits"] = dict(self.assigned)

    def describe(self) -> dict[str, Any]:
        """The bits chosen, for the run summary (null = float)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in self.BIT_FIELDS}

    def summary(self) -> dict[str, Any]:
        planned = [b for b in self.assigned.values() if b is not None]
        return {**self.describe(), "planned_quantized": len(planned), "planned_float": len(self.assigned) - len(planned)}


@dataclass
class PerModuleBits(BitAssignment):
    """Bits per module role (Q-BERT Table 3): ``attention`` and ``ffn`` besides the common keys."""

    attention: int | None = INHERIT
    ffn: int | None = INHERIT

    BIT_FIELDS: ClassVar[tuple[str, ...]] = BitAssignment.BIT_FIELDS + ("attention", "ffn")

    def encoder_bits(self, target: Target) -> int | None:
        return getattr(self, target.group)


@dataclass
class LayerwiseBits(BitAssignment):
    """Base of assignments that give each encoder layer its bits (attention and FFN weights alike)."""

    def layer_assignment(self) -> list[int | None]:
        raise NotImplementedError

    def encoder_bits(self, target: Target) -> int | None:
        return self.layer_assignment()[target.layer]

    def check_model(self, model) -> None:
        layers, n = self.layer_assignment(), num_layers(model)
        check(len(layers) == n, f"bit_assignment assigns {len(layers)} layer(s) but the model has {n} encoder layers")

    def average_linear_bits(self) -> float:
        used = [b for b in self.layer_assignment() if b is not None]
        return sum(used) / len(used) if used else 32.0

    def describe(self) -> dict[str, Any]:
        layers = ",".join("float" if b is None else str(b) for b in self.layer_assignment())
        return {"layer_bits": layers, **super().describe()}


def uniform_bits(bits: int, word_embedding_bits: int | None = None, position_embedding_bits: int | None = None,
                 token_type_embedding_bits: int | None = None) -> PerModuleBits:
    """One bit-width for every encoder/pooler Linear; embeddings float unless given."""
    return PerModuleBits(bits=bits, word_embedding=word_embedding_bits, position_embedding=position_embedding_bits,
                         token_type_embedding=token_type_embedding_bits)
