"""One lowbit wrapper per ``nn.Linear`` / ``nn.Embedding``, with ordered transform chains.

``LowbitLinear`` and ``LowbitEmbedding`` subclass the float module, keep its constructor
signature and share its parameters (``from_linear`` / ``from_embedding`` copy nothing, and keep
every attribute, buffer, submodule and hook the module already had). Each holds four slots,
all registered ``nn.ModuleDict`` s keyed by the method group that filled them:

- ``weight_transforms``: weight -> weight, ordered by ``chain_order`` (a pruning mask (10) runs
  before a quantizer (50), so the surviving weights are the ones quantized);
- ``input_transforms`` / ``output_transforms``: activations in and out (e.g. 8-bit input quantizer);
- ``bias_transforms``: bias -> bias.

Wrapping is idempotent: a second method adds to the chain of the existing wrapper. A
transform says what it is through ``kind`` (``mask``, ``quantizer`` or ``other``), which is all
that size accounting and export need to know. The effective weight is cached while it cannot
change (no grad, or a frozen weight), keyed by the weight's version and every transform's
``cache_key``, so evaluation and frozen parts compute masks and ranges at most once per step.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.codes import attach, recording
from lowbit.errors import LowbitConfigError
from lowbit.registry import Registry

SLOTS = ("weight", "input", "output", "bias")


class WeightTransform(nn.Module):
    """One step of a weight chain. ``forward(weight, mask=None)`` returns a tensor of the same shape.

    ``mask`` is the keep-mask of an earlier ``mask`` transform (None if there is none), so a
    quantizer can compute its statistics over the surviving weights only.
    """

    #: position in the chain (lower runs first)
    chain_order: ClassVar[int] = 50
    #: "mask" (exposes ``mask``), "quantizer" (exposes ``qparams``) or "other"
    kind: ClassVar[str] = "other"
    #: buffer names this transform's layer stores in its own packed format (size report, export)
    packed_buffers: ClassVar[tuple[str, ...]] = ()

    @property
    def row_separable(self) -> bool:
        """Transforming any subset of rows equals slicing the transformed weight (embedding fast path)."""
        return False

    def validate(self, weight: torch.Tensor, name: str) -> None:
        """Raise LowbitConfigError if this transform cannot apply to ``weight`` (before any change)."""

    def forward_rows(self, rows: torch.Tensor, row_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Transform rows ``row_ids`` of the weight; only called when ``row_separable``."""
        return self(rows, mask=mask)

    def cache_key(self) -> tuple:
        """State other than the weight that changes this transform's output (for the eval cache)."""
        return ()


class _LowbitLayer:
    """Chain bookkeeping shared by ``LowbitLinear`` and ``LowbitEmbedding``."""

    weight: nn.Parameter
    weight_transforms: nn.ModuleDict
    input_transforms: nn.ModuleDict
    output_transforms: nn.ModuleDict
    bias_transforms: nn.ModuleDict
    #: set by ``freeze_weight_``: the weight already holds the chain's output (reloaded exports)
    weight_frozen: bool

    def _init_slots(self) -> None:
        for slot in SLOTS:
            setattr(self, f"{slot}_transforms", nn.ModuleDict())
        self.weight_frozen = False
        self._cache = None
        self._codes_cache = None

    # -- building the chain ------------------------------------------------------------------
    def add_transform(self, slot: str, name: str, module: nn.Module) -> None:
        if slot not in SLOTS:
            raise LowbitConfigError(f"unknown layer slot {slot!r}; known: {SLOTS}")
        chain: nn.ModuleDict = getattr(self, f"{slot}_transforms")
        if name in chain:
            raise LowbitConfigError(f"{slot} slot already has a transform named {name!r}")
        items = [*chain.items(), (name, module)]
        items.sort(key=lambda kv: getattr(kv[1], "chain_order", 50))  # stable: ties keep insertion order
        setattr(self, f"{slot}_transforms", nn.ModuleDict(items))
        self._cache = None
        self._codes_cache = None

    def transform_of_kind(self, kind: str) -> WeightTransform | None:
        found = [t for t in self.weight_transforms.values() if getattr(t, "kind", "other") == kind]
        if len(found) > 1:
            raise LowbitConfigError(f"a weight chain holds {len(found)} transforms of kind {kind!r}")
        return found[0] if found else None

    @property
    def quantizer(self):
        """The weight quantizer of the chain, or None."""
        return self.transform_of_kind("quantizer")

    @property
    def weight_mask(self) -> torch.Tensor | None:
        """The keep-mask of the chain (bool, weight-shaped), or None."""
        t = self.transform_of_kind("mask")
        return None if t is None else t.mask

    # -- applying it -------------------------------------------------------------------------
    def _run_chain(self, weight: torch.Tensor, upto: str | None = None) -> torch.Tensor:
        mask = None
        for name, t in self.weight_transforms.items():
            if name == upto:
                break
            weight = t(weight, mask=mask)
            if t.kind == "mask":
                mask = t.mask
        return weight

    def effective_weight(self) -> torch.Tensor:
        """The weight after every transform of the chain (cached while it cannot change)."""
        if not self.weight_transforms or self.weight_frozen:
            return self.weight
        if torch.is_grad_enabled() and self.weight.requires_grad:
            self._cache = None
            return self._run_chain(self.weight)
        key = (self.weight._version, self.weight.data_ptr(), *(t.cache_key() for t in self.weight_transforms.values()))
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._run_chain(self.weight))
        return self._cache[1]

    def weight_before(self, name: str) -> torch.Tensor:
        """The weight as transform ``name`` of the chain sees it (e.g. the quantizer's input)."""
        return self._run_chain(self.weight, upto=name)

    def weight_qparams(self):
        """The chain quantizer's parameters for the current weight (its input: masked weight), or None."""
        q = self.quantizer
        if q is None:
            return None
        name = next(n for n, t in self.weight_transforms.items() if t is q)
        with torch.no_grad():
            return q.qparams(self.weight_before(name).detach(), mask=self.weight_mask)

    @torch.no_grad()
    def freeze_weight_(self, already_applied: bool = False) -> None:
        """Store the chain's output in the weight and skip the chain from now on (deployed / reloaded).

        ``already_applied``: the weight holds the chain's output already (unpacked from an export);
        the transforms stay in the chain for size accounting and ``qparams``.
        """
        if not self.weight_frozen and self.weight_transforms and not already_applied:
            self.weight.data = self._run_chain(self.weight).detach().clone()
        self.weight_frozen = True
        self._cache = None
        self._codes_cache = None

    def _apply_slot(self, slot: str, x: torch.Tensor) -> torch.Tensor:
        for t in getattr(self, f"{slot}_transforms").values():
            x = t(x)
        return x

    def _bias(self) -> torch.Tensor | None:
        bias = getattr(self, "bias", None)
        if bias is None or not self.bias_transforms:
            return bias
        for t in self.bias_transforms.values():
            # a bias quantizer on the S_w·S_x grid (I-BERT) reads the layer's weight and input scales
            bias = t(bias, layer=self) if getattr(t, "needs_layer", False) else t(bias)
        return bias


def _adopt(cls, module: nn.Module):
    """A ``cls`` instance sharing ``module``'s parameters, buffers, submodules, hooks and attributes."""
    new = cls.__new__(cls)
    for key, value in module.__dict__.items():  # containers copied, their contents shared
        new.__dict__[key] = copy.copy(value) if isinstance(value, (dict, set, list)) else value
    new._init_slots()
    return new


class LowbitLinear(_LowbitLayer, nn.Linear):
    """``nn.Linear`` with weight/input/output/bias transform chains (same constructor signature)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_slots()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "LowbitLinear":
        return linear if isinstance(linear, cls) else _adopt(cls, linear)

    #: set by a method (I-BERT's integer bias): multiply integer codes, scale after (see ``_linear_in_codes``)
    accumulate_in_codes: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transforms:
            x = self._apply_slot("input", x)
        if self.accumulate_in_codes:
            y = self._linear_in_codes(x)
        else:
            y = F.linear(x, self.effective_weight(), self._bias())
        return self._apply_slot("output", y) if self.output_transforms else y

    def _weight_codes(self, round_ste) -> tuple:
        """``(qparams, weight codes)`` of the chain's quantizer (codes None where ``_linear_in_codes`` does not
        multiply codes). Without gradients they are cached like ``effective_weight``: evaluation quantizes
        each weight once per weight version, not once per forward (the same values: the same expressions)."""
        from lowbit.quant.granularity import PerRow, PerTensor

        def compute():
            qp = self.weight_qparams()
            if qp is None or not qp.symmetric or not isinstance(qp.granularity, (PerRow, PerTensor)):
                return qp, None
            return qp, round_ste(self.effective_weight() / qp.scale.reshape(-1, 1))

        if torch.is_grad_enabled() and self.weight.requires_grad:
            return compute()
        key = (self.weight._version, self.weight.data_ptr(), self.weight_frozen,
               *(t.cache_key() for t in self.weight_transforms.values()))
        cached = self._codes_cache
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = self._codes_cache = (key, *compute())
        return cached[1], cached[2]

    def _linear_in_codes(self, x: torch.Tensor) -> torch.Tensor:
        """(x/S_x)·(W/S_w)ᵀ·S_x·S_w + b: the product of the integer codes, scaled once, as an integer engine's
        int32 accumulator. A float matmul of the scaled values rounds every product and partial sum; products
        and partial sums of 8-bit codes are exact in float32 while below 2^24 (evaluation accumulates in
        float64 when a layer is wide enough to pass it). A bias transform that puts the bias on the
        accumulator's grid (``codes_on_grid``, I-BERT's int32 bias) adds its codes to the accumulator, and in
        evaluation the accumulator is recorded as integer codes (``lowbit.codes``) for the next grid.
        Gradients as ``F.linear`` (straight through the rounding that recovers the codes)."""
        from lowbit.quant.granularity import PerRow, PerTensor

        def round_ste(t: torch.Tensor) -> torch.Tensor:
            return t + (torch.round(t) - t).detach()

        quantizer = next((t for t in self.input_transforms.values() if getattr(t, "static_scale", None)), None)
        s_x = quantizer.static_scale() if quantizer is not None else None
        if s_x is None:  # no static input grid: no codes to multiply (and no weight codes to compute)
            return F.linear(x, self.effective_weight(), self._bias())
        qp, w_codes = self._weight_codes(round_ste)
        if qp is None or not qp.symmetric or not isinstance(qp.granularity, (PerRow, PerTensor)):
            return F.linear(x, self.effective_weight(), self._bias())
        s_w = qp.scale.reshape(-1)  # [out] per row, [1] per tensor
        acc_scale = s_x.double() * s_w.double()  # the engine's S_x·S_w, in float64 as it computes it
        x_codes = round_ste(x / s_x)
        exact_bound = self.in_features * (2 ** (quantizer.bits - 1) - 1) * (2 ** (qp.bits - 1) - 1)
        dtype = torch.float64 if recording() and exact_bound >= 2**24 else x.dtype
        acc = F.linear(x_codes.to(dtype), w_codes.to(dtype))
        grid = [t for t in self.bias_transforms.values() if hasattr(t, "codes_on_grid")]
        bias_codes = None
        if self.bias is not None and len(self.bias_transforms) == 1 and grid:
            bias_codes = grid[0].codes_on_grid(self.bias, acc_scale)  # float64, STE to the bias
        if recording():
            acc = acc.double() if bias_codes is None else acc.double() + bias_codes
            bias = None if bias_codes is not None else self._bias()
            y = (acc * acc_scale).to(x.dtype)
            if bias is not None:  # a float bias: the accumulator is not integer any more
                return y + bias
            return attach(y, acc, acc_scale)
        y = acc * acc_scale.to(acc.dtype)
        if bias_codes is not None:
            return y + (bias_codes * acc_scale).to(y.dtype)
        bias = self._bias()
        return y if bias is None else y + bias


class LowbitEmbedding(_LowbitLayer, nn.Embedding):
    """``nn.Embedding`` with a weight chain and an output slot.

    In training, when every weight transform is row-separable (a mask; a quantizer with one
    range per row, e.g. TernaryBERT's word embeddings), only the looked-up rows are transformed:
    same result, and a 30k-row table is not re-quantized on every step.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *args, **kwargs):
        super().__init__(num_embeddings, embedding_dim, *args, **kwargs)
        self._init_slots()

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> "LowbitEmbedding":
        return embedding if isinstance(embedding, cls) else _adopt(cls, embedding)

    def _lookup(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, table, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                           self.sparse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        chain = self.weight_transforms
        if (chain and self.training and not self.weight_frozen and torch.is_grad_enabled()
                and all(t.row_separable for t in chain.values())):
            rows = self._lookup(ids, self.weight)
            flat, flat_ids = rows.reshape(-1, self.embedding_dim), ids.reshape(-1)
            mask = None
            for t in chain.values():
                flat = t.forward_rows(flat, flat_ids, mask=mask)
                if t.kind == "mask":
                    mask = t.mask[flat_ids]
            out = flat.reshape(rows.shape)
        else:
            out = self._lookup(ids, self.effective_weight())
        return self._apply_slot("output", out) if self.output_transforms else out


#: float base type -> lowbit wrapper (looked up along the module type's MRO)
WRAPPERS: Registry[type] = Registry("wrappable layer type")
WRAPPERS.register(nn.Linear, LowbitLinear)
WRAPPERS.register(nn.Embedding, LowbitEmbedding)
_ADOPTERS = {LowbitLinear: LowbitLinear.from_linear, LowbitEmbedding: LowbitEmbedding.from_embedding}

LowbitLayer = (LowbitLinear, LowbitEmbedding)


def wrapper_for(module: nn.Module) -> type | None:
    for base in type(module).__mro__:
        if base in WRAPPERS:
            return WRAPPERS.get(base)
    return None


def wrap(module: nn.Module) -> LowbitLinear | LowbitEmbedding:
    """The lowbit wrapper of ``module`` (the module itself if it is one already)."""
    if isinstance(module, LowbitLayer):
        return module
    cls = wrapper_for(module)
    if cls is None:
        raise LowbitConfigError(f"cannot wrap a {type(module).__name__}: lowbit wraps {sorted(map(str, WRAPPERS))}")
    return _ADOPTERS[cls](module)


def lowbit_layers(model: nn.Module) -> Iterator[tuple[str, LowbitLinear | LowbitEmbedding]]:
    """Every lowbit-wrapped layer of ``model`` with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, LowbitLayer):
            yield name, module


def freeze_weights_(model: nn.Module) -> nn.Module:
    for _, layer in lowbit_layers(model):
        layer.freeze_weight_()
    return model
