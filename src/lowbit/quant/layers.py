"""Fake-quant drop-ins for ``nn.Linear`` and ``nn.Embedding``.

They subclass the float module, keep its constructor signature and share its
parameters (``from_linear`` / ``from_embedding`` do not copy), so checkpoints,
optimizers and other surgery keep working. In eval mode the quantized weight is
cached until the weight changes, so validation does not re-quantize every batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.quantizers import ActivationQuantizer, WeightQuantizer


class _CachedWeightMixin:
    weight: nn.Parameter
    weight_quantizer: WeightQuantizer

    def quantized_weight(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self.weight_quantizer(self.weight)
        key = (self.weight._version, self.weight.data_ptr())
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, self.weight_quantizer(self.weight))
            self._cache = cache
        return cache[1]


class QuantLinear(_CachedWeightMixin, nn.Linear):
    """``nn.Linear`` whose weight (and optionally input) is fake-quantized."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 weight_quantizer: WeightQuantizer | None = None,
                 input_quantizer: ActivationQuantizer | None = None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_quantizer: WeightQuantizer,
                    input_quantizer: ActivationQuantizer | None = None) -> "QuantLinear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias  # shared, not copied
        new.weight_quantizer, new.input_quantizer = weight_quantizer, input_quantizer
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.linear(x, self.quantized_weight(), self.bias)


class QuantEmbedding(_CachedWeightMixin, nn.Embedding):
    """``nn.Embedding`` with a fake-quantized table.

    With a row-separable quantizer (one range per row, e.g. TernaryBERT's word
    embeddings) only the looked-up rows are quantized: identical result, and a
    30k-row table is not re-quantized on every training step.
    """

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, weight_quantizer: WeightQuantizer) -> "QuantEmbedding":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                     "scale_grad_by_freq", "sparse"):
            setattr(new, attr, getattr(embedding, attr))
        new.weight = embedding.weight
        new.weight_quantizer = weight_quantizer
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight_quantizer.row_separable and self.training:
            rows = F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                               self.scale_grad_by_freq, self.sparse)
            return self.weight_quantizer.forward_rows(rows.reshape(-1, self.embedding_dim), ids).reshape(rows.shape)
        return F.embedding(ids, self.quantized_weight(), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)
