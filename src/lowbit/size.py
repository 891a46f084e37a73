"""Model size as stored: what ``lowbit.export`` writes, tensor by tensor, in bits.

For every lowbit layer the weight is counted as its chain stores it:

- codes of the surviving weights (k-bit streams, ternary at 5 trits per byte, AdaptivFloat n-bit codes, or
  fp32 values when nothing quantizes them), whole bytes per stream;
- the quantizer's ranges: fp32 scales (α) and, for asymmetric grids, k-bit packed zero points; for
  AdaptivFloat an int16 exponent bias per range;
- with a pruning mask, the cheapest of: every code (``dense``: pruned positions hold the code of 0),
  or the survivors' codes + an index of which weights survive: a ``bitmap`` (1 bit per weight), ``csr``
  (column indices of ceil(log2(in_features)) bits + int32 row pointers), or ``delta`` (the gaps between
  survivors in row-major order as w-bit symbols, w per tensor, plus the width byte; see ``delta_index``);
  ``LayerStorage.format`` says which (``dense`` also when there is no mask). Ties keep that order.

Every other parameter and persistent buffer (biases, LayerNorm, the float classifier, activation
ranges of EMA observers) counts at its dtype's size. Shared tensors are counted once.
``fp32_bits`` is the same model's parameters at 32 bits each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.layers import lowbit_layers

FLOAT_BITS = 32
INDEX_POINTER_BITS = 32  # CSR row pointers: int32
#: delta index: symbol widths tried (16 bits reach 65k positions per symbol; escapes cover longer gaps)
MAX_DELTA_WIDTH = 16
DELTA_WIDTH_BITS = 8  # the chosen width, stored as one byte


@dataclass
class LayerStorage:
    numel: int
    kept: int  # surviving (non-pruned) weights
    value_kind: str  # "ternary" | "uniform" | "adaptivfloat" | "float"
    bits: int  # per stored value (ternary: 2, stored at 1.6)
    format: str  # "dense" | "bitmap" | "csr" | "delta"
    value_bits: int
    index_bits: int
    range_bits: int

    @property
    def total_bits(self) -> int:
        return self.value_bits + self.index_bits + self.range_bits


@dataclass
class SizeReport:
    total_bits: int
    fp32_bits: int
    by_module: dict[str, int] = field(default_factory=dict)
    layers: dict[str, LayerStorage] = field(default_factory=dict)

    @property
    def megabytes(self) -> float:
        return self.total_bits / 8 / 1e6

    @property
    def compression_ratio(self) -> float:
        return self.fp32_bits / self.total_bits

    def formats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.layers.values():
            out[s.format] = out.get(s.format, 0) + 1
        return out


def csr_index_bits(rows: int, cols: int, kept: int) -> int:
    col_bits = max(1, math.ceil(math.log2(cols))) if cols > 1 else 1
    return math.ceil(kept * col_bits / 8) * 8 + (rows + 1) * INDEX_POINTER_BITS


def delta_gaps(mask: torch.Tensor) -> torch.Tensor:
    """Per surviving weight, in row-major order, how many pruned weights precede it since the previous survivor."""
    positions = mask.reshape(-1).nonzero().squeeze(1)
    return torch.diff(positions, prepend=positions.new_full((1,), -1)) - 1


@dataclass(frozen=True)
class DeltaIndex:
    """The ``delta`` index of a mask: ``symbols`` w-bit symbols. A symbol below ``escape`` = 2^w - 1 is the gap
    before the next survivor; ``escape`` skips 2^w - 1 pruned weights without a survivor (gaps that do not fit)."""

    width: int
    symbols: int

    @property
    def escape(self) -> int:
        return 2**self.width - 1

    @property
    def bits(self) -> int:
        return math.ceil(self.symbols * self.width / 8) * 8 + DELTA_WIDTH_BITS


def delta_index(mask: torch.Tensor, gaps: torch.Tensor | None = None) -> DeltaIndex:
    """The cheapest width: each gap g costs 1 + floor(g / (2^w - 1)) symbols of w bits."""
    gaps = delta_gaps(mask) if gaps is None else gaps
    if gaps.numel() == 0:
        return DeltaIndex(1, 0)
    longest = int(gaps.max())
    best = None
    for width in range(1, MAX_DELTA_WIDTH + 1):
        candidate = DeltaIndex(width, gaps.numel() + int((gaps // (2**width - 1)).sum()))
        if best is None or candidate.bits < best.bits:
            best = candidate
        if 2**width - 1 > longest:  # no escapes left: a wider symbol only costs more
            break
    return best


def mask_index_bits(mask: torch.Tensor) -> dict[str, int]:
    """Bits to store which weights survive, per format: ``bitmap`` (1 bit each), ``csr`` or ``delta``."""
    rows, cols = mask.shape[0], int(mask[0].numel()) if mask.dim() > 1 else 1
    return {"bitmap": math.ceil(mask.numel() / 8) * 8, "csr": csr_index_bits(rows, cols, int(mask.sum())),
            "delta": delta_index(mask).bits}


@torch.no_grad()
def layer_storage(layer) -> LayerStorage:
    """How a lowbit layer's weight is stored: the cheapest of dense codes, or survivors + bitmap / CSR / delta index.

    Dense stores every code (pruned positions hold the code of 0), so a pruned ternary weight below
    62.5% sparsity stays dense: 1.6 bits per weight beats 1 bit of bitmap + 1.6 bits per survivor.
    """
    weight = layer.weight
    numel = weight.numel()
    mask = layer.weight_mask
    qp = layer.weight_qparams()
    if qp is None:
        kind, bits, range_bits = "float", weight.element_size() * 8, 0
        value_bits = lambda n: n * bits
    else:
        kind, bits, range_bits = qp.kind, qp.bits, qp.range_bits()
        value_bits = qp.code_bits
    best = LayerStorage(numel, numel, kind, bits, "dense", value_bits(numel), 0, range_bits)
    if mask is not None:
        kept = int(mask.sum())
        for fmt, index_bits in mask_index_bits(mask).items():
            candidate = LayerStorage(numel, kept, kind, bits, fmt, value_bits(kept), index_bits, range_bits)
            if candidate.total_bits < best.total_bits:
                best = candidate
    return best


def stored_tensors(model: nn.Module):
    """(module name, tensor name, tensor, is a packed lowbit weight) for every stored tensor, shared ones once."""
    packed_layers = dict(lowbit_layers(model))
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        layer = packed_layers.get(mod_name)
        for p_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            yield mod_name, p_name, param, layer is not None and p_name == "weight"
        packed_buffers = set(getattr(module, "packed_buffers", ()))
        for b_name, buf in module.named_buffers(recurse=False):
            if buf is None or b_name in module._non_persistent_buffers_set or b_name in packed_buffers:
                continue
            if id(buf) in seen:
                continue
            seen.add(id(buf))
            yield mod_name, b_name, buf, False


def size_report(model: nn.Module) -> SizeReport:
    total = fp32 = 0
    by_module: dict[str, int] = {}
    layers: dict[str, LayerStorage] = {}
    packed = dict(lowbit_layers(model))
    for mod_name, t_name, tensor, is_packed in stored_tensors(model):
        if is_packed:
            storage = layer_storage(packed[mod_name])
            layers[mod_name] = storage
            bits = storage.total_bits
        else:
            bits = tensor.numel() * tensor.element_size() * 8
        if isinstance(tensor, nn.Parameter):
            fp32 += tensor.numel() * FLOAT_BITS
        total += bits
        by_module[mod_name] = by_module.get(mod_name, 0) + bits
    return SizeReport(total, fp32, by_module, layers)


def model_size_bits(model: nn.Module) -> int:
    """Total storage of the model in bits, as ``lowbit.export`` stores it."""
    return size_report(model).total_bits
