"""``int8_cpu``: a trained I-BERT run as an integer-only encoder program.

``IntegerEncoder.from_model(model)`` reads a fake-quant model (``quantizer=ibert`` or any symmetric
per-channel/per-tensor or ternary weight quantizer with static 8-bit activations, plus
``approximation=ibert``) and keeps only integers and scales: int8 weight codes, int32 bias codes on the
S_w·S_x grid, the static activation scales, the integer ops' static input grids and LayerNorm shifts.
Every rescale between ops is a dyadic requantization (31-bit mantissa and a shift, I-BERT's
``FixedPointMul``) computed once at conversion; every tensor between ops is an integer tensor with a
scale. Only the embedding sum (a float lookup of the 8-bit tables, as the model computes it) is quantized
from float, onto the first LayerNorm's 22-bit input grid, and only the pooler's accumulator is dequantized:
the pooler's tanh and the float classifier run on the [CLS] vector (BERT). RoBERTa has no pooler: its
float classification head runs on the dequantized <s> vector.

``forward`` here is the *reference executor* of that program: exact integer arithmetic in torch
(int64 values carried in float64 through ``lowbit.algorithms.ibert.integer``, GEMMs of integer codes in
float64, exact below 2^53), which needs no compiler and is what parity tests compare against the QAT
model. In evaluation the QAT model computes the same integers (``lowbit.codes``): its ops record their
integer results and the next grid rescales those codes with the same dyadic multiplier, residual adds
included (each addend rescaled, then added, as I-BERT's ``FixedPointMul`` with its identity branch), and
its wide accumulators are exact; so codes at every layer boundary and the logits are equal (tested on the
tiny model and on the pretrained MiniLM; 872/872 SST-2 dev predictions on the I-BERT run of
``experiments/ibert``). In training (dropout between the ops) the QAT model divides by the scale instead.

What cannot deploy is refused in one line before conversion (AdaptivFloat weights, asymmetric or group-wise
weight ranges, dynamic or asymmetric activation ranges, a float GELU/softmax/LayerNorm, a model family other
than BERT and RoBERTa).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.algorithms.ibert import integer as I
from lowbit.algorithms.ibert.approximation import IntGELU, IntLayerNorm, IntSoftmax
from lowbit.attention import HOOKS_ATTR
from lowbit.errors import LowbitConfigError, check
from lowbit.layers import lowbit_layers
from lowbit.quant.granularity import PerRow, PerTensor
from lowbit.quant.quantizers import ActivationQuantizer
from lowbit.roles import find_targets

F64 = torch.float64


#: model family -> what follows the encoder: BERT's integer pooler (dense + tanh) then the float classifier,
#: or RoBERTa's float classification head (dense, tanh, out_proj) on the dequantized first vector
HEADS = {"bert": "pooler", "roberta": "float_head"}


class _EmbeddingSumReady(Exception):
    """Stops the embedding module at its LayerNorm's input (the engine runs the integer LayerNorm)."""


def _refuse(what: str, why: str, backend: str = "int8_cpu") -> LowbitConfigError:
    return LowbitConfigError(f"deploy backend {backend} cannot run {what}: {why}")


#: weight kinds the engine runs (integer codes on a uniform grid) and, for the others, the option that made them
INTEGER_WEIGHT_KINDS = ("uniform", "ternary")
FLOAT_CODE_OPTIONS = {"adaptivfloat": "quantizer=adaptivfloat"}


def check_integer_weights(model: nn.Module, backend: str = "int8_cpu") -> None:
    """Refuse, before any conversion, a model whose quantized weights are not integer codes (AdaptivFloat)."""
    for name, layer in lowbit_layers(model):
        if layer.quantizer is None:
            continue
        kind = layer.weight_qparams().kind
        if kind not in INTEGER_WEIGHT_KINDS:
            option = FLOAT_CODE_OPTIONS.get(kind, f"a {kind!r} quantizer")
            raise _refuse(name, f"its weights come from {option}: floating-point codes (sign, exponent, mantissa), "
                                "not integers on a uniform grid", backend)


def _static_input_scale(layer: nn.Module, name: str) -> torch.Tensor:
    quantizers = [t for t in layer.input_transforms.values() if isinstance(t, ActivationQuantizer)]
    if not quantizers:
        raise _refuse(name, "its input is not quantized (quantizer.activation.bits=8 with static ranges is needed)")
    scale = quantizers[0].static_scale()
    if scale is None or quantizers[0].bits != 8:
        q = quantizers[0]
        raise _refuse(name, f"its input quantizer is {q.bits}-bit {q.mode}, symmetric={q.symmetric}; the engine needs "
                            "8-bit symmetric static ranges (quantizer.activation.mode=ema, symmetric=true)")
    if not bool(quantizers[0].initialized):
        raise _refuse(name, "its input range was never observed (the model has not been trained)")
    return scale.detach().double()


def _frozen_grid(grid: nn.Module, name: str) -> torch.Tensor:
    """The static scale of an integer op's input grid (``StaticScale``), refused if it never saw training data."""
    if not bool(grid.initialized):
        raise _refuse(name, "its integer op's input range was never observed (the model has not been trained)")
    with torch.no_grad():
        return grid(torch.zeros(1)).double()  # frozen in eval: the stored range


@dataclass
class IntLinear:
    """int8 weight codes [out, in], int32 bias codes, input scale S_x (per tensor), weight scales S_w [out]."""

    name: str
    weight: torch.Tensor  # int8 codes
    bias: torch.Tensor | None  # int32 codes at S_x·S_w
    input_scale: torch.Tensor
    weight_scale: torch.Tensor

    @classmethod
    def from_layer(cls, layer: nn.Module, name: str) -> IntLinear:
        qp = layer.weight_qparams()
        if qp is None:
            raise _refuse(name, "its weight is float (bit_assignment left it unquantized)")
        if not qp.symmetric or not isinstance(qp.granularity, (PerRow, PerTensor)):
            raise _refuse(name, f"its weight ranges are {'asymmetric' if not qp.symmetric else ''}"
                                f" {type(qp.granularity).__name__} (the engine takes symmetric per-channel or "
                                "per-tensor ranges, or ternary weights)")
        if qp.bits > 8:
            raise _refuse(name, f"{qp.bits}-bit weights do not fit int8")
        with torch.no_grad():
            codes = qp.codes(layer.effective_weight())
        w_scale = qp.scale.detach().double().reshape(-1).expand(codes.shape[0]).clone()
        s_x = _static_input_scale(layer, name)
        bias = None
        if layer.bias is not None:
            grid = [t for t in layer.bias_transforms.values() if hasattr(t, "codes_on_grid")]
            with torch.no_grad():
                if len(layer.bias_transforms) == 1 and grid:  # the QAT layer's own int32 codes (IntBias)
                    bias = grid[0].codes_on_grid(layer.bias, s_x * w_scale)
                else:
                    bias = I.quantize_symmetric(layer._bias().detach().double(), s_x * w_scale, 32)
            check(bool((bias.abs() < 2**31).all()), f"{name}: a bias code does not fit int32")
        return cls(name, codes.to(torch.int8), None if bias is None else bias.to(torch.int32), s_x, w_scale)

    def __call__(self, x_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(int32 accumulator codes, their scale S_x·S_w [out]) of int8 input codes."""
        acc = torch.matmul(x_codes.to(F64), self.weight.to(F64).t())
        if self.bias is not None:
            acc = acc + self.bias.to(F64)
        return acc, self.input_scale * self.weight_scale


@dataclass
class IntLN:
    input_scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    shift: int
    input_bits: int

    @classmethod
    def from_module(cls, module: nn.Module, name: str) -> IntLN:
        if not isinstance(module, IntLayerNorm):
            raise _refuse(name, "its LayerNorm is float (approximation.layernorm=ibert is needed)")
        return cls(_frozen_grid(module.input_scale, name), module.weight.detach().double(),
                   module.bias.detach().double(), int(module.shift), module.input_bits)

    def __call__(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return I.int_layernorm(codes, self.input_scale, self.weight, self.bias, self.shift, grow_shift=False)


def _clamp_symmetric(codes: torch.Tensor, bits: int) -> torch.Tensor:
    n = 2 ** (bits - 1) - 1
    return codes.clamp(-n, n)  # lowbit's symmetric grid: the QAT quantizer never produces -2^(b-1)


def _requant(codes, scale_in, scale_out, bits, residual=None, residual_scale=None) -> torch.Tensor:
    return _clamp_symmetric(I.requantize(codes, scale_in, scale_out, bits, residual, residual_scale), bits)


@dataclass
class IntLayer:
    query: IntLinear
    key: IntLinear
    value: IntLinear
    q_scale: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    softmax_input_scale: torch.Tensor
    softmax_exp_scale: torch.Tensor
    softmax_input_bits: int
    softmax_output_bits: int
    attention_output: IntLinear
    ln_attention: IntLN
    intermediate: IntLinear
    gelu_input_scale: torch.Tensor
    gelu_input_bits: int
    ffn_output: IntLinear
    ln_ffn: IntLN
    num_heads: int


def _slot_scale(hooks, slot: str, name: str) -> torch.Tensor:
    qs = [t for t in getattr(hooks, slot).values() if isinstance(t, ActivationQuantizer)]
    if not qs or qs[0].static_scale() is None or qs[0].bits != 8:
        raise _refuse(name, f"its attention {slot} is not quantized to 8 bits with a static symmetric range")
    if not bool(qs[0].initialized):
        raise _refuse(name, f"its attention {slot} input range was never observed (the model has not been trained)")
    return qs[0].static_scale().detach().double()


@dataclass
class IntegerEncoder:
    """The integer program of a BERT or RoBERTa classifier (see the module docstring)."""

    model: nn.Module  # kept for the float embedding lookup, the pooler's tanh and the classifier
    ln_embedding: IntLN
    layers: list[IntLayer]
    pooler: IntLinear | None  # BERT's integer pooler; None: a float head on the dequantized first vector
    scaling: float
    embedding_ln: nn.Module | None = None  # the model's first LayerNorm: its input is the embedding sum
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module) -> IntegerEncoder:
        check_integer_weights(model)
        model_type = getattr(model.config, "model_type", "?")
        if model_type not in HEADS:
            raise _refuse(f"a {model_type!r} model", f"the integer engine covers the layouts of {sorted(HEADS)} so far")
        model = model.eval()
        by_layer: dict[int, dict[str, Any]] = {}
        for t in find_targets(model):
            if t.layer is not None:
                by_layer.setdefault(t.layer, {})[t.role] = t
        emb_ln = find_targets(model, "layer_norm.embedding")[0]
        layers = []
        heads = model.config.num_attention_heads
        for i in sorted(by_layer):
            r = by_layer[i]
            attn = r["self_attention"]
            hooks = getattr(attn.module, HOOKS_ATTR, None)
            if hooks is None or not isinstance(hooks.softmax, IntSoftmax):
                raise _refuse(attn.name, "its softmax is float (approximation.softmax=ibert is needed)")
            act = r["act_fn"].module
            if not isinstance(act, IntGELU):
                raise _refuse(r["act_fn"].name, "its GELU is not i-GELU (approximation.gelu=ibert is needed)")
            sm: IntSoftmax = hooks.softmax
            # what the options allow first (weights, activation grids), then whether ranges were observed
            linears = {role: IntLinear.from_layer(r[role].module, r[role].name)
                       for role in ("attention.query", "attention.key", "attention.value", "attention.output",
                                    "ffn.intermediate", "ffn.output")}
            slots = {slot: _slot_scale(hooks, slot, attn.name) for slot in ("query", "key", "value")}
            layers.append(IntLayer(
                query=linears["attention.query"], key=linears["attention.key"], value=linears["attention.value"],
                q_scale=slots["query"], k_scale=slots["key"], v_scale=slots["value"],
                softmax_input_scale=_frozen_grid(sm.input_scale, attn.name),
                softmax_exp_scale=_frozen_grid(sm.exp_scale, attn.name), softmax_input_bits=sm.input_bits,
                softmax_output_bits=sm.output_bits, attention_output=linears["attention.output"],
                ln_attention=IntLN.from_module(r["layer_norm.attention"].module, r["layer_norm.attention"].name),
                intermediate=linears["ffn.intermediate"],
                gelu_input_scale=_frozen_grid(act.input_scale, r["act_fn"].name), gelu_input_bits=act.input_bits,
                ffn_output=linears["ffn.output"],
                ln_ffn=IntLN.from_module(r["layer_norm.ffn"].module, r["layer_norm.ffn"].name),
                num_heads=heads))
        pooler = None
        if HEADS[model_type] == "pooler":
            target = find_targets(model, "pooler")[0]
            pooler = IntLinear.from_layer(target.module, target.name)
        head_dim = model.config.hidden_size // heads
        return cls(model, IntLN.from_module(emb_ln.module, emb_ln.name), layers, pooler, head_dim**-0.5,
                   embedding_ln=emb_ln.module)

    # -- the program -------------------------------------------------------------------------------
    def _embedding_sum(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """The float sum of the 8-bit embedding rows as the model's own embedding module computes it (its
        position ids included: RoBERTa numbers positions after the padding index), read at the input of
        its LayerNorm, which is not run."""
        captured = []

        def capture(_module, args):
            captured.append(args[0])
            raise _EmbeddingSumReady

        handle = self.embedding_ln.register_forward_pre_hook(capture)
        try:
            self.model.base_model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        except _EmbeddingSumReady:
            pass
        finally:
            handle.remove()
        return captured[0]

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, heads, d // heads).transpose(1, 2)

    def _layer(self, layer: IntLayer, h: torch.Tensor, h_scale: torch.Tensor, masked: torch.Tensor,
               record: dict | None, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        def rec(key, value):
            if record is not None:
                record[f"layer{i}.{key}"] = value

        q_in = _requant(h, h_scale, layer.query.input_scale, 8)
        rec("attention_input", q_in)
        q_acc, q_s = layer.query(q_in)
        k_acc, k_s = layer.key(_requant(h, h_scale, layer.key.input_scale, 8))
        v_acc, v_s = layer.value(_requant(h, h_scale, layer.value.input_scale, 8))
        q8 = self._heads(_requant(q_acc, q_s, layer.q_scale, 8), layer.num_heads)
        k8 = self._heads(_requant(k_acc, k_s, layer.k_scale, 8), layer.num_heads)
        v8 = self._heads(_requant(v_acc, v_s, layer.v_scale, 8), layer.num_heads)
        rec("query", q8)
        scores = torch.matmul(q8, k8.transpose(-1, -2))  # int32 accumulator at S_q·S_k·d^-1/2
        s_in = _requant(scores, layer.q_scale * layer.k_scale * self.scaling, layer.softmax_input_scale,
                        layer.softmax_input_bits)
        s_in = torch.where(masked, torch.full_like(s_in, -(2 ** (layer.softmax_input_bits - 1) - 1)), s_in)
        probs, p_scale = I.int_softmax(s_in, layer.softmax_input_scale, layer.softmax_output_bits,
                                       exp_scale_fn=lambda _e, s=layer.softmax_exp_scale: s)
        probs = probs.clamp(max=2**layer.softmax_output_bits - 1)
        rec("probs", probs)
        context = torch.matmul(probs, v8).transpose(1, 2).reshape(h.shape)  # at 2^-8·S_v
        ao_in = _requant(context, p_scale * layer.v_scale, layer.attention_output.input_scale, 8)
        rec("attention_output_input", ao_in)
        ao_acc, ao_s = layer.attention_output(ao_in)
        ln = layer.ln_attention
        ln_in = _requant(ao_acc, ao_s, ln.input_scale, ln.input_bits, h, h_scale)
        h1, h1_scale = ln(ln_in)
        i_acc, i_s = layer.intermediate(_requant(h1, h1_scale, layer.intermediate.input_scale, 8))
        g_in = _requant(i_acc, i_s, layer.gelu_input_scale, layer.gelu_input_bits)
        g, g_scale = I.int_gelu(g_in, layer.gelu_input_scale)
        o_in = _requant(g, g_scale, layer.ffn_output.input_scale, 8)
        rec("ffn_output_input", o_in)
        o_acc, o_s = layer.ffn_output(o_in)
        ln = layer.ln_ffn
        h2, h2_scale = ln(_requant(o_acc, o_s, ln.input_scale, ln.input_bits, h1, h1_scale))
        rec("output", h2)
        return h2, h2_scale

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, record: dict | None = None) -> torch.Tensor:
        """Logits of a batch; ``record`` (a dict) receives the integer codes at every layer boundary."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        masked = (attention_mask == 0)[:, None, None, :]
        x = self._embedding_sum(input_ids, token_type_ids)
        ln = self.ln_embedding
        codes = I.quantize_symmetric(x, ln.input_scale, ln.input_bits)  # the one float -> int step
        h, h_scale = ln(codes)
        if record is not None:
            record["embedding.output"] = h
        for i, layer in enumerate(self.layers):
            h, h_scale = self._layer(layer, h, h_scale, masked, record, i)
        if self.pooler is None:  # RoBERTa: the float head (dense, tanh, out_proj) on the dequantized <s> vector
            return self.model.classifier((h[:, :1] * h_scale).float())
        cls_codes = _requant(h[:, 0], h_scale, self.pooler.input_scale, 8)
        acc, scale = self.pooler(cls_codes)
        pooled = torch.tanh((acc * scale).float())  # the one int -> float step before the head
        head = self.model.classifier
        return head(pooled)


def convert(model: nn.Module) -> IntegerEncoder:
    return IntegerEncoder.from_model(model)
