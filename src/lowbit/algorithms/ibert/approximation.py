"""The ``approximation`` group: I-BERT's integer GELU, softmax and LayerNorm, and the GELU baselines.

Each integer op is a module that replaces a role (``act_fn``, the ``softmax`` slot of every
self-attention, ``layer_norm.*``) and runs I-BERT's integer arithmetic (``lowbit.algorithms.ibert.integer``)
on integer values carried in float64 tensors, with the straight-through gradients of the paper's
code (``floor_ste`` / ``round_ste``), so QAT sees the numbers an integer engine produces.

Every integer op owns a static input grid: a symmetric scale from EMA min/max (I-BERT's
``QuantAct``, momentum 0.95), moving in training, frozen in evaluation and in stages with frozen
observers. The op's input is requantized onto that grid (an engine does it with one dyadic
multiply) instead of consuming the int32 accumulator with its per-channel scale as I-BERT's code
does: the op then works with one per-tensor constant scale whatever produced its input (any
quantizer, or none), which is what lets ``approximation=ibert`` combine with every other method.
Input grids: GELU and softmax 16 bits, LayerNorm 22 bits (I-BERT's LayerNorm input width; codes
held in int32). Softmax outputs are 8-bit unsigned codes with scale 2^-8; a probability of exactly 1
(code 256 in I-BERT's code) is held as 255, so the codes fit uint8 (one LSB, only at p > 255/256).

Options (``conf/approximation/``): ``ibert`` (all three integer), ``hgelu`` and ``sigmoid_gelu``
(only the GELU replaced by the paper's baselines, in float); per-op switches ``gelu`` (exact |
ibert | hgelu | sigmoid), ``softmax`` (exact | ibert), ``layernorm`` (exact | ibert) replace one op
alone (I-BERT Table 4: ``approximation=ibert approximation.gelu=hgelu``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lowbit.algorithms.ibert import integer as I
from lowbit.codes import attach, lookup, recording, requantized
from lowbit.dyadic import requantize_symmetric
from lowbit.errors import LowbitConfigError, check
from lowbit.methods import Method
from lowbit.registry import Registry

GELU_CHOICES = ("exact", "ibert", "hgelu", "sigmoid")
SOFTMAX_CHOICES = ("exact", "ibert")
LAYERNORM_CHOICES = ("exact", "ibert")
#: ``config.hidden_act`` values that are the exact (erf) GELU: the function i-GELU approximates
ERF_GELU_ACTS = ("gelu", "gelu_python")


class StaticScale(nn.Module):
    """A symmetric ``bits``-bit static scale from EMA min/max (I-BERT ``QuantAct``), returned by ``forward``.

    In an unfrozen training forward the range first moves toward this batch's min/max (all-reduced over
    DDP ranks); in evaluation it is frozen. An observer that has seen no training batch (a sanity-check
    validation before the first step) uses the batch's own range without storing it.
    ``valid``: a bool mask of the entries that count for the range (attention scores: not the masked keys).
    """

    is_observer = True

    def __init__(self, bits: int, momentum: float = 0.95):
        super().__init__()
        check(2 <= bits <= 32, f"approximation input bits must be in [2, 32], got {bits!r}")
        check(0.0 <= momentum < 1.0, f"approximation.momentum must be in [0, 1), got {momentum!r}")
        self.bits, self.momentum, self.frozen = bits, momentum, False
        self.register_buffer("running_min", torch.zeros((), dtype=torch.float64))
        self.register_buffer("running_max", torch.zeros((), dtype=torch.float64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def needs_batch(self) -> bool:
        """Whether ``forward`` reads the batch's range (an unfrozen training forward, or nothing seen yet)."""
        return (self.training and not self.frozen) or not bool(self.initialized)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """``valid``: the mask, or a function that computes it (only called when the batch range is read)."""
        if not self.needs_batch():  # frozen or evaluation: the stored range, no pass over the batch
            return I.symmetric_scale(torch.maximum(self.running_min.abs(), self.running_max.abs()), self.bits)
        seen = x.detach()
        if valid is not None:
            seen = seen[valid() if callable(valid) else valid]
        if seen.numel():
            lo, hi = seen.amin().double(), seen.amax().double()
        else:
            lo = hi = torch.zeros((), dtype=torch.float64, device=x.device)
        if self.training and not self.frozen:
            from lowbit.distributed import all_reduce_range

            lo, hi = all_reduce_range(lo, hi)
            if not bool(self.initialized):
                self.running_min.copy_(lo), self.running_max.copy_(hi), self.initialized.fill_(True)
            else:
                self.running_min.lerp_(lo, 1 - self.momentum)
                self.running_max.lerp_(hi, 1 - self.momentum)
        if bool(self.initialized):
            lo, hi = self.running_min, self.running_max
        return I.symmetric_scale(torch.maximum(lo.abs(), hi.abs()), self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}"


def _input_codes(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` on an integer op's input grid: its recorded integer codes rescaled dyadically (evaluation, as the
    engine), else the float value divided by the scale and rounded (training)."""
    codes = requantized(x, scale, bits)
    return I.quantize_symmetric(x, scale, bits) if codes is None else codes


class IntGELU(nn.Module):
    """i-GELU (I-BERT eq. 7–8): x·½(1 + L(x/√2)), L a second-order polynomial of erf, in integers."""

    def __init__(self, input_bits: int = 16, momentum: float = 0.95):
        super().__init__()
        self.input_bits = input_bits
        self.input_scale = StaticScale(input_bits, momentum)
        n = 2 ** (input_bits - 1) - 1
        self.table = I.IntegerTable(I.int_gelu, -n, n)  # evaluation: codes looked up, not recomputed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.input_scale(x)
        codes = _input_codes(x, scale, self.input_bits)
        out, out_scale = self.table(codes, scale)
        return attach((out * out_scale).to(x.dtype), out, out_scale)


class FloatGELUApproximation(nn.Module):
    """A float GELU baseline of I-BERT Table 1: h-GELU (x·ReLU6(1.702x+3)/6) or x·σ(1.702x)."""

    FUNCTIONS: ClassVar[dict] = {"hgelu": I.h_gelu, "sigmoid": I.sigmoid_gelu}

    def __init__(self, kind: str):
        super().__init__()
        check(kind in self.FUNCTIONS, f"unknown GELU approximation {kind!r}; known: {sorted(self.FUNCTIONS)}")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.FUNCTIONS[self.kind](x)

    def extra_repr(self) -> str:
        return self.kind


class IntSoftmax(nn.Module):
    """i-softmax (I-BERT Algorithm 2): row max subtracted, i-exp, integer normalisation to ``output_bits`` codes.

    Scores of masked keys (the additive mask's ``finfo.min``) do not count for the input range and
    saturate at the grid's minimum, where i-exp is 2^-30 of the row maximum's.
    """

    def __init__(self, input_bits: int = 16, output_bits: int = 8, momentum: float = 0.95):
        super().__init__()
        self.input_bits, self.output_bits = input_bits, output_bits
        self.input_scale = StaticScale(input_bits, momentum)
        self.exp_scale = StaticScale(16, momentum)  # I-BERT's inner QuantAct(16) "to avoid overflow"
        # max-subtracted input codes lie in [-2n, 0]: i-exp looked up in evaluation
        self.exp_table = I.IntegerTable(I.int_exp, -2 * (2 ** (input_bits - 1) - 1), 0)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        scale = self.input_scale(scores, lambda: scores > torch.finfo(scores.dtype).min / 2)
        codes = _input_codes(scores, scale, self.input_bits)  # recorded codes: masked keys at -inf -> grid min
        out, out_scale = I.int_softmax(codes, scale, self.output_bits, exp_scale_fn=self.exp_scale,
                                       exp_fn=self.exp_table)
        out = torch.clamp(out, max=2**self.output_bits - 1)  # p = 1 held as 255/256: codes fit uint8
        return attach((out * out_scale).float(), out, out_scale)

    def extra_repr(self) -> str:
        return f"input_bits={self.input_bits}, output_bits={self.output_bits}"


class IntLayerNorm(nn.Module):
    """i-LayerNorm (I-BERT §3.5): integer mean and variance, standard deviation by integer Newton isqrt.

    Shares the replaced LayerNorm's ``weight`` and ``bias`` (same state-dict keys, so float checkpoints
    load). ``shift`` (a buffer) grows in training until the variance fits 32 bits, as in I-BERT's code.
    """

    def __init__(self, layer_norm: nn.LayerNorm, input_bits: int = 22, momentum: float = 0.95):
        super().__init__()
        check(layer_norm.weight is not None and layer_norm.bias is not None,
              "approximation.layernorm=ibert needs a LayerNorm with weight and bias")
        self.normalized_shape = layer_norm.normalized_shape
        self.weight, self.bias = layer_norm.weight, layer_norm.bias
        self.input_bits = input_bits
        self.input_scale = StaticScale(input_bits, momentum)
        self.register_buffer("shift", torch.zeros((), dtype=torch.long))
        self._addends: list[torch.Tensor | None] = [None, None]  # (sublayer output, residual), see watch_residual

    def watch_residual(self, block: nn.Module) -> bool:
        """Read the two addends of ``LayerNorm(dense(h) + residual)`` in ``block`` (BERT's ``*Output`` blocks:
        ``forward(hidden_states, input_tensor)`` with children ``dense`` and this LayerNorm), so that in
        evaluation the sum is requantized as an engine does it: each addend's integer codes rescaled
        dyadically onto this op's grid, then added (I-BERT's ``FixedPointMul`` with its identity branch).
        Returns False (nothing installed) for another layout; the float sum is quantized then."""
        dense = getattr(block, "dense", None)
        params = list(inspect.signature(block.forward).parameters)
        if dense is None or params[:2] != ["hidden_states", "input_tensor"]:
            return False
        block.register_forward_pre_hook(self._see_residual, with_kwargs=True)
        dense.register_forward_hook(self._see_sublayer_output)
        return True

    def _see_residual(self, _block, args, kwargs):
        if recording():
            self._addends[1] = args[1] if len(args) > 1 else kwargs.get("input_tensor")

    def _see_sublayer_output(self, _dense, _args, output):
        if recording():
            self._addends[0] = output

    def _residual_codes(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
        sublayer, residual = self._addends
        self._addends = [None, None]
        if sublayer is None or residual is None:
            return None
        a, r = lookup(sublayer), lookup(residual)
        # x must be exactly that sum (dropout is the identity in evaluation; anything else: no record)
        if a is None or r is None or not torch.equal(x, sublayer + residual):
            return None
        return requantize_symmetric(a.codes, a.scale, scale, self.input_bits, r.codes, r.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.input_scale(x)
        codes = self._residual_codes(x, scale) if recording() else None
        if codes is None:
            codes = _input_codes(x, scale, self.input_bits)
        learning = self.training and not self.input_scale.frozen
        if learning:
            self.shift.fill_(I.layernorm_shift(codes.detach(), int(self.shift)))
        # frozen: the stored shift, so a row's output never depends on the rest of its batch
        out, out_scale = I.int_layernorm(codes, scale, self.weight, self.bias, int(self.shift), grow_shift=False)
        return attach((out * out_scale).to(x.dtype), out, out_scale)

    def extra_repr(self) -> str:
        return f"{tuple(self.normalized_shape)}, input_bits={self.input_bits}"


#: ``approximation.gelu`` choice -> builder of the act_fn replacement (returns None: keep the exact GELU)
GELU_BUILDERS: Registry = Registry("approximation.gelu")
GELU_BUILDERS.register("exact", lambda spec: None)
GELU_BUILDERS.register("ibert", lambda spec: IntGELU(spec.gelu_input_bits, spec.momentum))
GELU_BUILDERS.register("hgelu", lambda spec: FloatGELUApproximation("hgelu"))
GELU_BUILDERS.register("sigmoid", lambda spec: FloatGELUApproximation("sigmoid"))


def hidden_act(model: nn.Module) -> str:
    config = model.config
    return str(getattr(config, "hidden_act", getattr(config, "hidden_activation", "?")))


@dataclass
class IntegerApproximation(Method):
    """I-BERT's integer-only nonlinear ops (``approximation=ibert``) or one GELU baseline, op by op."""

    gelu: str = "ibert"
    softmax: str = "ibert"
    layernorm: str = "ibert"
    gelu_input_bits: int = 16
    softmax_input_bits: int = 16
    softmax_output_bits: int = 8
    layernorm_input_bits: int = 22
    momentum: float = 0.95
    #: put the bias of every quantized Linear with a static input grid on the S_w·S_x grid (int32), as
    #: quantizer=ibert does, so another method's weights (ternary) deploy on the integer engine exactly
    int_bias: bool = True

    def __post_init__(self):
        for key, value, choices in (("gelu", self.gelu, GELU_CHOICES), ("softmax", self.softmax, SOFTMAX_CHOICES),
                                    ("layernorm", self.layernorm, LAYERNORM_CHOICES)):
            check(value in choices, f"approximation.{key} must be one of {list(choices)}, got {value!r}")
        for key in ("gelu_input_bits", "softmax_input_bits", "layernorm_input_bits"):
            bits = getattr(self, key)
            check(isinstance(bits, int) and 2 <= bits <= 32, f"approximation.{key} must be in [2, 32], got {bits!r}")
        check(isinstance(self.softmax_output_bits, int) and 2 <= self.softmax_output_bits <= 16,
              f"approximation.softmax_output_bits must be in [2, 16], got {self.softmax_output_bits!r}")
        check(0.0 <= self.momentum < 1.0, f"approximation.momentum must be in [0, 1), got {self.momentum!r}")
        self.replaced: dict[str, int] = {}

    @property
    def ops(self) -> dict[str, str]:
        return {"gelu": self.gelu, "softmax": self.softmax, "layernorm": self.layernorm}

    def prepare(self, model: nn.Module, edit) -> None:
        self.replaced = {"gelu": 0, "softmax": 0, "layernorm": 0}
        build_gelu = GELU_BUILDERS.get(self.gelu)
        if build_gelu(self) is not None:
            act = hidden_act(model)
            if act not in ERF_GELU_ACTS:
                raise LowbitConfigError(
                    f"approximation.gelu={self.gelu} replaces GELU, but this model's activation (config.hidden_act) is "
                    f"{act!r}; set approximation.gelu=exact")
            for target in edit.targets("act_fn"):
                edit.replace(target, build_gelu(self))
                self.replaced["gelu"] += 1
        if self.softmax == "ibert":
            for target, _ in edit.self_attention():
                edit.set_softmax(target, IntSoftmax(self.softmax_input_bits, self.softmax_output_bits, self.momentum))
                self.replaced["softmax"] += 1
        if self.layernorm == "ibert":
            for target in edit.targets("layer_norm"):
                check(isinstance(target.module, nn.LayerNorm),
                      f"approximation.layernorm=ibert: {target.name} is a {type(target.module).__name__}, not a LayerNorm")
                int_ln = IntLayerNorm(target.module, self.layernorm_input_bits, self.momentum)
                edit.replace(target, int_ln)
                self.replaced["layernorm"] += 1
                parent = target.name.rpartition(".")[0]
                if parent:
                    int_ln.watch_residual(edit.model.get_submodule(parent))
        self.replaced["int_bias"] = self._integer_biases(edit) if self.int_bias else 0
        for op, choice in self.ops.items():
            if choice != "exact" and self.replaced[op] == 0:
                raise LowbitConfigError(f"approximation.{op}={choice}: the model has no {op} module to replace")

    @staticmethod
    def _integer_biases(edit) -> int:
        from lowbit.algorithms.ibert.recipe import IntBias
        from lowbit.layers import lowbit_layers

        n = 0
        for name, layer in lowbit_layers(edit.model):
            if (isinstance(layer, nn.Linear) and layer.bias is not None and layer.quantizer is not None
                    and not layer.bias_transforms and IntBias.input_scale_module(layer) is not None):
                edit.add_bias_transform(name, IntBias())
                layer.accumulate_in_codes = True  # QAT's accumulator = the engine's int32 one
                n += 1
        return n

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {op: choice for op, choice in self.ops.items()}
        out.update({f"replaced_{op}": n for op, n in self.replaced.items()})
        return out
