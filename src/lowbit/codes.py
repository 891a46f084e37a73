"""Integer codes carried beside the float activations of a fake-quant model, for exact engine parity.

A fake-quant model passes float tensors between its ops; an integer engine passes integer tensors with
scales and changes a scale with a dyadic multiply (``lowbit.dyadic``). Dividing the float value by
the next grid's scale and rounding equals the dyadic rescale except near rounding ties, and on a real
model one such LSB compounds over the layers (I-BERT on MiniLM: 16 of 872 SST-2 predictions changed).
So an op that produces an integer result (a Linear accumulating in codes, i-GELU, i-softmax,
i-LayerNorm, I-BERT's softmax-output grid, the attention matmuls of recorded Q, K, V and probabilities, a
static quantizer whose input carried codes) *records* ``(codes, scale)`` on its float output, and an op
that puts that tensor on its own grid rescales the recorded codes dyadically, as the engine does: both
then compute the same function of the same integers. Models without integer producers record nothing
and pay one attribute lookup per quantizer.

Records are only written when gradients are off (evaluation, export, calibration): in training, dropout
sits between most producers and consumers and no engine reproduces it, so training keeps the float
division (it differs from the engine only at near-ties). A record is found through views of the tensor
it was written on (reshape, transpose, ``[:, 0]``: the same view is taken of the codes); it is ignored
once the tensor has been modified in place (version counter), and a tensor that is a new result of a
float op (a sum, a product) has none — consumers then divide as before, so a record can only make a
consumer exact, never wrong.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from lowbit.dyadic import requantize_symmetric

_ATTR = "_lowbit_codes"
#: storage address -> the tensor a record was written on. Views are found by their storage, not ``_base``:
#: under ``torch.inference_mode`` (Lightning's evaluation) views do not keep their base.
_BY_STORAGE: dict[int, weakref.ref] = {}


def _forget(ptr: int, ref: weakref.ref) -> None:
    if _BY_STORAGE.get(ptr) is ref:
        del _BY_STORAGE[ptr]


@dataclass(frozen=True)
class IntegerCodes:
    """``value ~ codes * scale``: ``codes`` float64 exact integers, ``scale`` float64 broadcastable to them."""

    codes: Tensor
    scale: Tensor


@dataclass(frozen=True)
class _Record:
    codes: Tensor  # contiguous, the shape of the tensor it was written on
    scale: Tensor
    version: int | None  # None for inference tensors (no version counter)


def recording() -> bool:
    """Whether producers record codes now (gradients off)."""
    return not torch.is_grad_enabled()


def _version(t: Tensor) -> int | None:
    return None if t.is_inference() else t._version


def attach(value: Tensor, codes: Tensor, scale: Tensor) -> Tensor:
    """Record ``value ~ codes * scale`` on ``value`` (a fresh result, not a view); returns ``value``.

    The recorded codes are laid out like ``value`` (same strides), so that any view of ``value`` maps onto
    them. Does nothing while recording is off, or for a view or a tensor whose elements overlap.
    """
    if not recording() or value._base is not None or value.storage_offset() or not value.numel():
        return value
    codes = codes.detach()
    if not (codes.dtype == torch.float64 and codes.shape == value.shape and codes.stride() == value.stride()
            and not codes.storage_offset()):  # else one copy, laid out like value
        layout = torch.empty_like(value, dtype=torch.float64)  # dense tensors: empty_like keeps the strides
        if layout.stride() != value.stride():
            return value
        codes = layout.copy_(codes.expand(value.shape))
    scale = scale.detach().to(torch.float64)
    setattr(value, _ATTR, _Record(codes, scale, _version(value)))
    ptr = value.untyped_storage().data_ptr()
    _BY_STORAGE[ptr] = weakref.ref(value, lambda ref, ptr=ptr: _forget(ptr, ref))
    return value


def lookup(x: Tensor) -> IntegerCodes | None:
    """The codes recorded for ``x`` (or the tensor ``x`` is a view of), with ``x``'s view taken of them."""
    if not recording():
        return None
    record: _Record | None = getattr(x, _ATTR, None)
    base = x
    if record is None:
        ref = _BY_STORAGE.get(x.untyped_storage().data_ptr()) if x.numel() else None
        base = ref() if ref is not None else None
        record = getattr(base, _ATTR, None)
    if record is None or x.dtype != base.dtype or _version(x) != record.version:
        return None
    if x is base:
        return IntegerCodes(record.codes, record.scale)
    view = (x.size(), x.stride(), x.storage_offset())
    codes = record.codes.as_strided(*view)
    scale = record.scale
    if scale.numel() > 1:  # per channel: the same view of the scale laid out like the codes
        scale = torch.broadcast_to(scale, record.codes.shape).contiguous().as_strided(*view)
    return IntegerCodes(codes, scale)


def requantized(x: Tensor, scale_out: Tensor, bits: int) -> Tensor | None:
    """Codes of ``x`` on the symmetric ``bits``-bit grid ``scale_out``, rescaled dyadically from its record
    (as an engine does); None when ``x`` has no record."""
    found = lookup(x)
    if found is None:
        return None
    return requantize_symmetric(found.codes, found.scale, scale_out.detach().double(), bits)
