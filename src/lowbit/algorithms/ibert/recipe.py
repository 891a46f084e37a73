"""``quantizer=ibert``: I-BERT's quantization scheme (Kim et al., 2021, §3.1 and the official code).

- Linear weights: symmetric, per output channel, ``bits`` from ``bit_assignment`` (8 in the paper),
  scale max|w|/(2^(b-1)−1), codes in [−(2^(b−1)−1), 2^(b−1)−1] (transformers' ``SymmetricQuantFunction``
  clamps the top code to 126; lowbit keeps the symmetric grid, see ``integer.quantize_symmetric``);
- biases: 32-bit integers on the accumulator's grid S_w·S_x (``IntBias``), so the bias adds in int32;
- embeddings: symmetric per tensor at the planned bits (8);
- activations: 8-bit symmetric static ranges from EMA min/max (momentum 0.95, frozen for evaluation) on
  every Linear input and on Q, K and V;
- softmax output: 8-bit unsigned codes with the fixed scale 2^−8 (``FixedScaleQuantizer``).

The nonlinear ops (GELU, softmax, LayerNorm) are the ``approximation`` group's: I-BERT experiments set
``approximation=ibert``. In evaluation every rescale between integer results is the engine's dyadic
multiply (31-bit mantissa and a shift) of the recorded integer codes (``lowbit.codes``), so the
fake-quant model and the ``int8_cpu`` engine compute the same integers; in training (dropout between
the ops) a rescale is a division by the static scale and a round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.algorithms.ibert import integer as I
from lowbit.codes import attach
from lowbit.errors import check
from lowbit.quant.granularity import PerRow, PerTensor
from lowbit.quant.quantizers import UniformWeightQuantizer, WeightQuantizer
from lowbit.quant.recipes import ActivationSpec, QuantRecipe, as_activation_spec
from lowbit.roles import EMBEDDING_ROLES, Target


class IntBias(nn.Module):
    """A bias on the accumulator grid S_w·S_x with ``bits``-bit codes (STE round), S_x the input's static scale.

    Needs the layer (``needs_layer``): S_w per output channel from the weight chain's quantizer, S_x from
    the layer's static input quantizer. Without either (no input quantizer yet) the bias stays float.
    """

    needs_layer = True
    chain_order = 50

    def __init__(self, bits: int = 32):
        super().__init__()
        check(bits in (16, 32), f"quantizer.bias_bits must be 16 or 32, got {bits!r}")
        self.bits = bits

    @staticmethod
    def input_scale_module(layer) -> nn.Module | None:
        """The layer's static symmetric input quantizer (``static_scale()`` not None), or None."""
        for t in layer.input_transforms.values():
            if getattr(t, "static_scale", lambda: None)() is not None:
                return t
        return None

    @classmethod
    def input_scale(cls, layer) -> torch.Tensor | None:
        module = cls.input_scale_module(layer)
        return None if module is None else module.static_scale()

    def codes_on_grid(self, bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The bias's ``bits``-bit codes on the accumulator grid ``scale`` = S_x·S_w (float64; gradient
        ``grad / scale`` to the bias). A Linear that accumulates in codes adds them to its accumulator."""
        return I.quantize_symmetric(bias, scale.double(), self.bits)

    def forward(self, bias: torch.Tensor, layer=None) -> torch.Tensor:
        if layer is None:
            return bias
        s_x, qp = self.input_scale(layer), layer.weight_qparams()
        if s_x is None or qp is None:
            return bias
        scale = qp.scale.reshape(-1).double() * s_x.double()
        return (self.codes_on_grid(bias, scale) * scale).to(bias.dtype)


class FixedScaleQuantizer(nn.Module):
    """Unsigned ``bits``-bit codes with a fixed scale 2^−bits (I-BERT's softmax output); STE inside [0, 1]."""

    chain_order = 60  # after any other probs transform (a span mask)

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = bits

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        scale = 2.0 ** -self.bits
        codes = torch.clamp(I.round_ste(p.double() / scale), 0, 2**self.bits - 1)
        return attach((codes * scale).to(p.dtype), codes, torch.tensor(scale, dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale=2^-{self.bits}"


def ibert_activation() -> ActivationSpec:
    return ActivationSpec(bits=8, symmetric=True, mode="ema", clip=None, momentum=0.95,
                          sites=("linear_input", "query", "key", "value"), float_layers="skip")


@dataclass
class IBertRecipe(QuantRecipe):
    """I-BERT: symmetric per-channel weights, int32 biases, static 8-bit activations, 2^−8 softmax output."""

    activation: ActivationSpec | dict | None = None
    bias_bits: int = 32
    softmax_output_bits: int | None = 8

    def __post_init__(self):
        self.activation = as_activation_spec(self.activation) or ibert_activation()
        check(self.activation.bits is None or self.activation.symmetric,
              "quantizer=ibert: activations are symmetric (quantizer.activation.symmetric=true)")
        check(self.softmax_output_bits is None or 2 <= self.softmax_output_bits <= 16,
              f"quantizer.softmax_output_bits must be in [2, 16] or null, got {self.softmax_output_bits!r}")
        check(not (self.softmax_output_bits and "attention_probs" in self.activation.active_sites()),
              "quantizer=ibert quantizes the softmax output with quantizer.softmax_output_bits (scale 2^-8): "
              "remove attention_probs from quantizer.activation.sites or set quantizer.softmax_output_bits=null")
        IntBias(self.bias_bits)  # validates bias_bits

    def weight_quantizer(self, target: Target, bits: int) -> WeightQuantizer:
        granularity = PerTensor() if target.role in EMBEDDING_ROLES else PerRow()
        return UniformWeightQuantizer(bits, symmetric=True, granularity=granularity)

    def prepare(self, model: nn.Module, edit) -> None:
        super().prepare(model, edit)
        self.biases = 0
        for name in self.report.quantized:
            layer = edit.layer(name)
            if isinstance(layer, nn.Linear) and layer.bias is not None and layer.input_transforms:
                edit.add_bias_transform(name, IntBias(self.bias_bits))
                layer.accumulate_in_codes = True  # QAT's accumulator = the engine's int32 one
                self.biases += 1
        self.softmax_sites = 0
        if self.softmax_output_bits is not None:
            for target, _ in edit.self_attention():
                edit.add_attention_transform(target, "probs", FixedScaleQuantizer(self.softmax_output_bits),
                                             suffix="softmax_output")
                self.softmax_sites += 1

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        if out:
            out.update({"int_biases": getattr(self, "biases", 0), "softmax_output_sites": getattr(self, "softmax_sites", 0)})
        return out
