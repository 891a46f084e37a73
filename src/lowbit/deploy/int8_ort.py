"""``int8_ort``: the ``int8_cpu`` integer program as an integer-only ONNX graph run by ONNX Runtime.

``OrtIntegerEncoder(IntegerEncoder.from_model(model))`` writes the program that ``lowbit.deploy.int8_cpu``
defines (and executes as a reference in float64) as an ONNX graph of integer ops only, and runs it with ONNX
Runtime's CPU kernels:

* **GEMMs**: ``MatMulInteger`` with *uint8 × uint8* operands and zero points 128 (int8 codes stored as
  ``c + 128``; softmax probabilities, unsigned, with zero point 0). On this AVX2 CPU without VNNI ORT's default
  u8 × s8 kernel saturates int16 pair sums with full-range int8 weights (wrong on ~all outputs), s8 × s8 runs at
  0.3× fp32, and u8 × u8 is exact and 1.5× ORT's fp32 MatMul (``experiments/ibert/kernels.md``). The same kernel
  serves Q·Kᵀ and P·V, where both operands are runtime tensors.
* **Requantization** (every rescale, residual adds included): the dyadic ``round(q · m / 2^e)``, half to even as
  ``torch.round`` in the reference, exact in 64-bit integers. Where the static bound of |q| rules out a rounding
  tie (almost everywhere: accumulator bounds come from the weight codes) half to even equals half up and the
  rescale is four uint64 ops: ``Mul`` (wrapping, so the signed product needs no cast), ``Add`` of 2^63 + 2^(e-1),
  ``BitShift`` (ONNX shifts unsigned types only), the 2^(63-e) offset removed with the zero point before one
  ``Clip``. Otherwise the full half-to-even form (``(u + 2^(e-1) - 1 + ((u >> e) & 1)) >> e``); where |q| · m could
  pass 2^62 (LayerNorm outputs, ~2^31 codes, times a 31-bit mantissa) the product is formed in two halves of the
  mantissa with the low bits kept as a sticky bit. 8-bit results are written as uint8 with zero point 128 for the
  next GEMM directly.
* **i-softmax, i-GELU, i-LayerNorm**: the reference's integer formulas (``integer.py``). With
  ``elementwise="tables"`` (default) the per-element chains whose input is a 16-bit code are lookup tables of the
  exact integer function over every input code, built at conversion: i-exp with its 16-bit requantization
  (≤ 2^16 int32 entries), and i-GELU with the requantization to the next GEMM's uint8 operand (2^16 entries) — one
  ``Gather`` each; the row max, row sum and normalisation stay integer ops (int32 / uint32). ``elementwise="ops"``
  writes the formulas op by op instead (tested equal). LayerNorm: integer mean rounded half to even, variance,
  the integer Newton square root unrolled (uint64 ``Div``/``BitShift``/``Min``), ``floor(2^31 / std)``.
Only the embedding sum is quantized from float (torch, the model's own embedding module, as the reference) and
only the pooler accumulator is dequantized (tanh and the float classifier in torch).

**Parity with the reference executor.** Every op is exact integer arithmetic. The reference carries integers in
float64, exact below 2^53; above it (``q · m`` of the LayerNorm outputs and of i-exp's codes) its product is
rounded before the shift and this graph's is not, so a code could differ by one LSB where the exact quotient lies
within ~2^-20 of a rounding boundary (none seen: codes at every layer boundary and logits are equal on the tiny
models and on MiniLM in the tests; ``python -m lowbit.deploy CKPT --backend int8_ort`` counts agreeing predictions
on a dev set).

**Speed** (``python -m lowbit.bench ibert_inference``, ``experiments/ibert``): the u8 × u8 GEMMs are ~1.5× ORT's
fp32 MatMul on this AVX2 CPU, but ONNX Runtime fuses none of the integer elementwise ops, and the 64-bit
requantizations and LayerNorms are separate passes over memory; see the measured ratios there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lowbit.algorithms.ibert import integer as I
from lowbit.deploy.int8_cpu import IntegerEncoder, IntLayer, IntLinear, IntLN, check_integer_weights
from lowbit.dyadic import batch_frexp
from lowbit.errors import LowbitConfigError

OPSET = 18  # BitwiseAnd
U64_OFFSET = 1 << 63
MAX_SHIFT = 62


def dyadic_constants(scale_in: torch.Tensor, scale_out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(m, e) of ``lowbit.dyadic.dyadic_rescale``: S_in / float32(S_out) = m / 2^e, m of 31 bits (int64 arrays)."""
    s_out = torch.as_tensor(scale_out, dtype=torch.float64)
    ratio = torch.as_tensor(scale_in, dtype=torch.float64) / s_out.to(torch.float32).to(torch.float64)
    m, e = batch_frexp(ratio)
    return m.reshape(-1).numpy().astype(np.int64), e.reshape(-1).numpy().astype(np.int64)


def _refuse(why: str) -> LowbitConfigError:
    return LowbitConfigError(f"deploy backend int8_ort cannot run this model: {why}")


def _round_half_even_shift(num: int, k: int) -> int:
    """round_half_even(num / 2^k) of a Python int (exact), k >= 1."""
    fl = num >> k
    rem = num - (fl << k)
    half = 1 << (k - 1)
    return fl + (rem > half or (rem == half and fl & 1))


def _rescale_int(q: int, m: int, e: int) -> int:
    return _round_half_even_shift(q * m, e) if e >= 1 else q * m << -e


def softmax_exp_table(layer: IntLayer) -> np.ndarray:
    """exp16[j]: i-exp of the max-subtracted code q = -j, requantized to 16 bits (``integer.int_exp`` then
    ``requantize(exp, S_exp, S16, 16)``), for every j in [0, min(30·|x0_int|, 2^b - 2)] (inputs below 30·x0_int
    are held there, as i-exp does; b-bit inputs minus their row max are >= 2 - 2^b): the whole per-element chain
    of i-softmax before the row sum, exact; at most 2^16 - 1 entries for the 16-bit grid."""
    scale = layer.softmax_input_scale.double()
    x0 = int(torch.floor(I.EXP_X0 / scale))
    b = int(torch.floor(I.EXP_B / scale))
    c = int(torch.floor(I.EXP_C / scale**2))
    (m,), (e,) = dyadic_constants(I.EXP_A * scale**2 / 2**I.EXP_CONST, layer.softmax_exp_scale)
    m, e = int(m), int(e)
    # q = s - max(s) of b-bit codes is >= -2·(2^(b-1) - 1), and i-exp holds q below 30·x0_int there
    out = np.empty(min(I.EXP_CONST * -x0, 2 * (2 ** (layer.softmax_input_bits - 1) - 1)) + 1, dtype=np.int32)
    for j in range(out.size):
        q = -j
        z = q // x0
        p = q - x0 * z
        poly = max((p + b) * p + c, 0)
        out[j] = min(_rescale_int(poly << (I.EXP_CONST - z), m, e), 2**15 - 1)
    if out[0] < 2**14:  # exp(0) must land near the top of the 16-bit grid, or the uint32 normalisation could overflow
        raise _refuse(f"i-exp(0) is {int(out[0])} on the 16-bit exp grid (< 2^14): its range was not observed on the "
                      "softmax's own values")
    return out


def gelu_requant_table(layer: IntLayer) -> np.ndarray:
    """codes8[c + n]: i-GELU (``integer.int_gelu``) of the 16-bit code c, requantized to the FFN output's 8-bit
    input grid, for every c in [-n, n] (n = 2^(b-1) - 1), stored as uint8 with zero point 128: the whole chain
    from the GELU's input grid to the next GEMM's operand, exact."""
    scale = layer.gelu_input_scale.double()
    s = scale / I.GELU_K
    b = int(torch.floor(I.GELU_B / s))
    c = int(torch.floor(I.GELU_C / s**2))
    erf_scale = s**2 * I.GELU_A * 2**I.GELU_SHIFT
    one = int(1.0 // erf_scale)
    (m,), (e,) = dyadic_constants(-(scale * erf_scale / 2), layer.ffn_output.input_scale)
    m, e = int(m), int(e)
    n = 2 ** (layer.gelu_input_bits - 1) - 1
    out = np.empty(2 * n + 1, dtype=np.uint8)
    for i, q in enumerate(range(-n, n + 1)):
        sign = (q > 0) - (q < 0)
        erf = (sign * ((min(abs(q), -b) + b) ** 2 + c)) >> I.GELU_SHIFT
        code = _rescale_int(-(q * (erf + one)), m, e)
        out[i] = max(-127, min(127, code)) + 128
    return out


class _Graph:
    """A minimal ONNX graph builder: constants, nodes, typed outputs."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, dtype, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, out: str | None = None, **attrs) -> str:
        from onnx import helper

        name = out or self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=f"n_{name}", **attrs))
        return name

    # -- typed helpers --------------------------------------------------------------------------------
    def cast(self, x: str, to: str) -> str:
        from onnx import TensorProto

        return self.op("Cast", x, to=getattr(TensorProto, to.upper()))

    def i64(self, value) -> str:
        return self.const(value, np.int64, "i64")

    def u32(self, value) -> str:
        return self.const(np.asarray(value, dtype=np.uint32), np.uint32, "u32")

    def u64(self, value) -> str:
        return self.const(np.asarray(value, dtype=np.uint64), np.uint64, "u64")


def _bound_ok(bound: float, m: np.ndarray) -> bool:
    return bound * float(np.abs(m).max()) < 2.0**MAX_SHIFT


def _no_ties(bound: float, m: np.ndarray, e: np.ndarray) -> bool:
    """No integer 0 < |q| <= bound makes q · m / 2^e a rounding tie (see ``_Program.rescale``)."""
    trailing = np.array([(abs(int(v)) & -abs(int(v))).bit_length() - 1 if v else 63 for v in m.reshape(-1)])
    return bool((bound < 2.0 ** (e.reshape(-1) - 1 - trailing)).all())


class _Program:
    """Writes the integer program of an ``IntegerEncoder`` as ONNX nodes."""

    def __init__(self, enc: IntegerEncoder, record: bool, elementwise: str = "tables"):
        if elementwise not in ELEMENTWISE:
            raise LowbitConfigError(f"int8_ort: elementwise must be one of {ELEMENTWISE}, got {elementwise!r}")
        self.enc, self.g, self.record, self.tables = enc, _Graph(), record, elementwise == "tables"
        self.outputs: list[tuple[str, str]] = []  # (graph name, element type)

    # -- integer primitives ---------------------------------------------------------------------------
    def rounding_shift(self, y: str, k: np.ndarray) -> str:
        """round_half_even(y / 2^k) of int64 ``y`` (|y| <= 2^62), k constant (broadcast over the last dim)."""
        g = self.g
        u = g.op("Add", g.cast(y, "uint64"), g.u64(U64_OFFSET))
        odd = g.op("BitwiseAnd", g.op("BitShift", u, g.u64(k), direction="RIGHT"), g.u64(1))
        u = g.op("Add", g.op("Add", u, g.u64((np.uint64(1) << (k - 1).astype(np.uint64)) - np.uint64(1))), odd)
        r = g.cast(g.op("BitShift", u, g.u64(k), direction="RIGHT"), "int64")
        return g.op("Sub", r, g.i64(np.left_shift(np.int64(1), (63 - k))))

    def rescale(self, q: str, bound: float, m: np.ndarray, e: np.ndarray) -> tuple[str, np.ndarray]:
        """round_half_even(q · m / 2^e) exactly, of integer ``q`` (int32 or int64) with |q| <= ``bound`` (static):
        ``(r, offset)``, r int64 holding the result plus ``offset`` (0 or a constant per channel).

        Fast path, when no tie is possible: q · m ≡ 2^(e-1) (mod 2^e) needs 2^(e-1-t) | q (t: trailing zero bits
        of m), impossible for 0 < |q| < 2^(e-1-t); then half to even equals half up, floor((y + 2^(e-1)) / 2^e),
        one uint64 Add and BitShift with the offset 2^63 folded into the added constant (uint64 arithmetic wraps,
        so the signed product needs no int64 cast)."""
        g = self.g
        m, e = m.astype(np.int64).copy(), np.broadcast_to(e.astype(np.int64), m.shape).copy()
        if (e < 1).any():
            raise _refuse(f"a rescale by 2^{-int(e.min())} or more (a ratio of scales >= 2^30)")
        vanishing = (e > MAX_SHIFT) & (bound * np.abs(m).astype(np.float64) < 2.0 ** (e - 1))
        m[vanishing], e[vanishing] = 0, MAX_SHIFT  # |q·m / 2^e| < 1/2 there: always 0 (a tiny ratio of scales)
        narrow = (e <= MAX_SHIFT).all()
        if narrow and _bound_ok(bound, m) and _no_ties(bound, m, e):
            u = g.op("Mul", g.cast(q, "uint64"), g.u64(m))
            u = g.op("Add", u, g.u64((np.uint64(1) << np.uint64(63)) + (np.uint64(1) << (e - 1).astype(np.uint64))))
            return g.cast(g.op("BitShift", u, g.u64(e), direction="RIGHT"), "int64"), np.left_shift(1, 63 - e)
        q = g.cast(q, "int64")
        if narrow and _bound_ok(bound, m):
            return self.rounding_shift(g.op("Mul", q, g.i64(m)), e), np.zeros(1, np.int64)
        if bound * 2.0**16 >= 2.0**MAX_SHIFT or (e < 17).any() or (e - 15 > MAX_SHIFT).any():
            raise _refuse(f"an integer tensor bounded by {bound:.3g} rescaled by 2^-{int(e.max())}: no exact int64 form")
        # q·m = q·m_hi·2^16 + q·m_lo: hi2 = q·m_hi + floor(q·m_lo / 2^16), low 16 bits only as a sticky bit,
        # which decides ties exactly as the full product would (v = 2·hi2 + sticky, shifted by e - 15)
        lo_prod = g.op("Mul", q, g.i64(m & 0xFFFF))
        low = g.op("BitwiseAnd", lo_prod, g.i64(0xFFFF))
        hi2 = g.op("Add", g.op("Mul", q, g.i64(m >> 16)),
                   g.op("Div", g.op("Sub", lo_prod, low), g.i64(1 << 16)))  # exact division
        sticky = g.cast(g.op("Greater", low, g.i64(0)), "int64")
        v = g.op("Add", g.op("Mul", hi2, g.i64(2)), sticky)
        return self.rounding_shift(v, e - 15), np.zeros(1, np.int64)

    def requant(self, q: str, bound: float, scale_in, scale_out, bits: int, residual: tuple | None = None,
                out: str = "int64") -> str:
        """Codes at ``scale_out`` on lowbit's symmetric ``bits``-bit grid of integer codes at ``scale_in`` (+ a
        residual addend ``(codes, bound, scale)``, rescaled on its own and added, as I-BERT's identity branch).
        ``out``: ``int64`` codes, or ``uint8`` with zero point 128 (a GEMM operand)."""
        g = self.g
        r, offset = self.rescale(q, bound, *dyadic_constants(scale_in, scale_out))
        if residual is not None:
            r_codes, r_bound, r_scale = residual
            r2, offset2 = self.rescale(r_codes, r_bound, *dyadic_constants(r_scale, scale_out))
            r, offset = g.op("Add", r, r2), offset + offset2
        zero_point = 128 if out == "uint8" else 0
        if (offset != zero_point).any():
            r = g.op("Sub", r, g.i64(offset - zero_point))
        n = 2 ** (bits - 1) - 1
        r = g.op("Clip", r, g.i64(zero_point - n), g.i64(zero_point + n))
        return r if out == "int64" else g.cast(r, out)

    def floor_shift(self, y: str, k: int) -> str:
        """floor(y / 2^k) of int64 ``y`` (|y| < 2^62)."""
        if k == 0:
            return y
        g = self.g
        u = g.op("Add", g.cast(y, "uint64"), g.u64(U64_OFFSET))
        r = g.cast(g.op("BitShift", u, g.u64(k), direction="RIGHT"), "int64")
        return g.op("Sub", r, g.i64(1 << (63 - k)))

    def emit_u8(self, name: str, value_u8: str):
        if self.record:
            self.emit(name, self.g.op("Sub", self.g.cast(value_u8, "int64"), self.g.i64(128)))

    def emit(self, name: str, value: str, kind: str = "int64"):
        if self.record:
            self.g.op("Identity", value, out=name)
            self.outputs.append((name, kind))

    # -- program pieces -------------------------------------------------------------------------------
    def linear(self, x_u8: str, lin: IntLinear) -> tuple[str, float]:
        """(int32 accumulator + bias codes, its static bound) of uint8 (zp 128) input codes: MatMulInteger
        u8 × u8. Bound: 127 · max over outputs of Σ|w| + max|bias| (input codes are in [-127, 127])."""
        g = self.g
        w_codes = lin.weight.to(torch.int64)
        w = g.const((w_codes.t().numpy() + 128).astype(np.uint8), np.uint8, f"{lin.name}.w")
        acc = g.op("MatMulInteger", x_u8, w, g.const(np.uint8(128), np.uint8), g.const(np.uint8(128), np.uint8))
        bound = 127.0 * float(w_codes.abs().sum(1).max())
        if lin.bias is not None:
            acc = g.op("Add", acc, g.const(lin.bias.numpy().astype(np.int32), np.int32, f"{lin.name}.b"))
            bound += float(lin.bias.to(torch.int64).abs().max())
        return acc, bound

    def isqrt(self, n: str) -> str:
        """floor(sqrt(n)) of int64 n >= 0 (n < 2^62): the integer Newton iteration of ``integer.isqrt`` from
        2^ceil(bits/2), unrolled (``min`` keeps the fixed point, as the reference's loop stops there)."""
        g = self.g
        v = g.cast(n, "uint64")
        bits = g.u64(0)
        for s in (32, 16, 8, 4, 2, 1):
            shifted = g.op("BitShift", v, g.u64(s), direction="RIGHT")
            big = g.cast(g.op("Greater", shifted, g.u64(0)), "uint64")
            v = g.op("Add", g.op("Mul", shifted, big), g.op("Mul", v, g.op("Sub", g.u64(1), big)))
            bits = g.op("Add", bits, g.op("Mul", big, g.u64(s)))
        bits = g.op("Add", bits, g.cast(g.op("Greater", v, g.u64(0)), "uint64"))
        nn_ = g.cast(n, "uint64")
        x = g.op("BitShift", g.u64(1), g.op("BitShift", g.op("Add", bits, g.u64(1)), g.u64(1), direction="RIGHT"),
                 direction="LEFT")
        for _ in range(NEWTON_STEPS):
            y = g.op("BitShift", g.op("Add", x, g.op("Div", nn_, g.op("Max", x, g.u64(1)))), g.u64(1),
                     direction="RIGHT")
            x = g.op("Min", x, y)
        return g.cast(x, "int64")

    def round_half_even_div(self, s: str, d: int, bound: float) -> str:
        """round_half_even(s / d) of int64 ``s`` (|s| <= bound), d > 0 constant."""
        g = self.g
        c = int(bound // d) + 1
        fl = g.op("Sub", g.op("Div", g.op("Add", s, g.i64(c * d)), g.i64(d)), g.i64(c))  # floor: dividend >= 0
        twice_r = g.op("Mul", g.op("Sub", s, g.op("Mul", fl, g.i64(d))), g.i64(2))
        odd = g.op("Equal", g.op("BitwiseAnd", fl, g.i64(1)), g.i64(1))
        up = g.op("Or", g.op("Greater", twice_r, g.i64(d)), g.op("And", g.op("Equal", twice_r, g.i64(d)), odd))
        return g.op("Add", fl, g.cast(up, "int64"))

    def layernorm(self, q: str, ln: IntLN, hidden: int) -> tuple[str, torch.Tensor, float]:
        """i-LayerNorm (``integer.int_layernorm``, stored shift): (int64 codes, their scale [H], static bound)."""
        g = self.g
        in_bound = 2.0 ** (ln.input_bits - 1)
        s = g.op("ReduceSum", q, g.i64([-1]), keepdims=1)
        mean = self.round_half_even_div(s, hidden, in_bound * hidden)
        y = g.op("Sub", q, mean)
        ys = self.floor_shift(y, ln.shift)
        var = g.op("ReduceSum", g.op("Mul", ys, ys), g.i64([-1]), keepdims=1)
        std = g.op("Mul", g.op("Max", self.isqrt(var), g.i64(1)), g.i64(1 << ln.shift))
        factor = g.op("Div", g.i64(1 << I.LAYERNORM_FACTOR_BITS), std)
        out = self.floor_shift(g.op("Mul", y, factor), 1)
        dim_sqrt = torch.sqrt(torch.tensor(float(hidden), dtype=torch.float32)).to(torch.float64)
        out_scale = dim_sqrt / 2 ** (I.LAYERNORM_FACTOR_BITS - 1)
        bias_int = torch.floor(ln.bias / ln.weight / out_scale)
        out = g.op("Add", out, g.i64(bias_int.numpy().astype(np.int64)))
        # |y| / std <= 2 (each |floor(y / 2^s)| >= |y| / 2^s - 1 and isqrt(var) >= that), so |y·factor / 2| <= 2^31
        bound = 2.0**31 + float(bias_int.abs().max())
        return out, out_scale * ln.weight, bound

    def gelu(self, q: str, scale: torch.Tensor) -> tuple[str, torch.Tensor, float]:
        """i-GELU (``integer.int_gelu``) of 16-bit codes: (int64 codes, scale, bound)."""
        g = self.g
        scale = scale.double()
        s = scale / I.GELU_K
        b_int = int(torch.floor(I.GELU_B / s))
        c_int = int(torch.floor(I.GELU_C / s**2))
        erf_scale = s**2 * I.GELU_A * 2**I.GELU_SHIFT
        one_int = int(1.0 // erf_scale)
        sign = g.op("Sign", q)
        a = g.op("Add", g.op("Min", g.op("Abs", q), g.i64(-b_int)), g.i64(b_int))
        erf = g.op("Mul", sign, g.op("Add", g.op("Mul", a, a), g.i64(c_int)))
        erf = self.floor_shift(erf, I.GELU_SHIFT)
        out = g.op("Neg", g.op("Mul", q, g.op("Add", erf, g.i64(one_int))))
        bound = 2.0**15 * ((b_int**2 + abs(c_int)) / 2**I.GELU_SHIFT + 1 + abs(one_int))
        return out, -(scale * erf_scale / 2), bound

    def softmax(self, s: str, layer: IntLayer) -> str:
        """i-softmax (``integer.int_softmax`` with the static 16-bit exp scale) of int64 codes: uint8 codes."""
        g = self.g
        scale = layer.softmax_input_scale.double()
        x0_int = int(torch.floor(I.EXP_X0 / scale))
        b_int = int(torch.floor(I.EXP_B / scale))
        c_int = int(torch.floor(I.EXP_C / scale**2))
        q = g.op("Sub", s, g.op("ReduceMax", s, g.i64([-1]), keepdims=1))
        q = g.op("Max", q, g.i64(I.EXP_CONST * x0_int))
        z = g.op("Div", q, g.i64(x0_int))  # both <= 0: truncation is the floor
        p = g.op("Sub", q, g.op("Mul", z, g.i64(x0_int)))
        poly = g.op("Max", g.op("Add", g.op("Mul", g.op("Add", p, g.i64(b_int)), p), g.i64(c_int)), g.i64(0))
        poly_bound = float(abs(c_int) + abs(b_int) * abs(x0_int) + x0_int**2)
        # exp_int = poly · 2^(30 - z); requantized to 16 bits: round(poly · m / 2^(e - 30 + z)), per element
        m, e = dyadic_constants(I.EXP_A * scale**2 / 2**I.EXP_CONST, layer.softmax_exp_scale)
        m, e = int(m[0]), int(e[0])
        if e - I.EXP_CONST < 1:
            raise _refuse("i-exp's 16-bit requantization has a ratio of scales >= 2^-1")
        k = g.cast(g.op("Add", z, g.i64(e - I.EXP_CONST)), "uint64")
        if poly_bound * m < 2.0**MAX_SHIFT:
            y, k_off = g.cast(g.op("Mul", poly, g.i64(m)), "uint64"), 0
        else:  # two halves of the mantissa with a sticky bit, as ``rescale``
            lo_prod = g.op("Mul", poly, g.i64(m & 0xFFFF))
            low = g.op("BitwiseAnd", lo_prod, g.i64(0xFFFF))
            hi2 = g.op("Add", g.op("Mul", poly, g.i64(m >> 16)),
                       g.op("Div", g.op("Sub", lo_prod, low), g.i64(1 << 16)))  # exact division
            sticky = g.cast(g.op("Greater", low, g.i64(0)), "int64")
            y, k_off = g.cast(g.op("Add", g.op("Mul", hi2, g.i64(2)), sticky), "uint64"), 15
        if k_off:
            k = g.op("Sub", k, g.u64(k_off))
        in_range = g.cast(g.op("LessOrEqual", k, g.u64(MAX_SHIFT)), "uint64")  # y < 2^62 <= 2^(k-1) beyond: 0
        k = g.op("Min", k, g.u64(MAX_SHIFT))
        # y >= 0: the rounding shift needs no offset; 2^(k-1) - 1 from the per-element k
        odd = g.op("BitwiseAnd", g.op("BitShift", y, k, direction="RIGHT"), g.u64(1))
        half_m1 = g.op("Sub", g.op("BitShift", g.u64(1), g.op("Sub", k, g.u64(1)), direction="LEFT"), g.u64(1))
        exp16 = g.op("BitShift", g.op("Add", g.op("Add", y, half_m1), odd), k, direction="RIGHT")
        exp16 = g.op("Min", g.cast(g.op("Mul", exp16, in_range), "int64"), g.i64(2**15 - 1))
        total = g.op("ReduceSum", exp16, g.i64([-1]), keepdims=1)
        factor = g.op("Div", g.i64(1 << I.SOFTMAX_MAX_BIT), total)
        probs = g.op("Div", g.op("Mul", exp16, factor), g.i64(1 << (I.SOFTMAX_MAX_BIT - layer.softmax_output_bits)))
        return g.op("Min", probs, g.i64(2**layer.softmax_output_bits - 1))

    def softmax_from_table(self, s: str, layer: IntLayer) -> str:
        """i-softmax with its per-element chain (i-exp + 16-bit requantization) read from
        ``softmax_exp_table``: int32 max and sum, uint32 normalisation (exp16 · floor(2^32 / Σ) < 2^32 because
        exp16 <= Σ and exp16 < 2^15); uint8 codes."""
        g = self.g
        table = softmax_exp_table(layer)
        s = g.cast(s, "int32")
        q = g.op("Sub", g.op("ReduceMax", s, g.i64([-1]), keepdims=1), s)  # -(s - max) >= 0
        q = g.op("Min", q, g.const(np.int32(table.size - 1), np.int32))
        exp16 = g.op("Gather", g.const(table, np.int32, "exp_table"), q, axis=0)
        total = g.cast(g.op("ReduceSum", exp16, g.i64([-1]), keepdims=1), "uint64")
        # the row max's entry is table[0] >= 2^14 (see softmax_exp_table's check), so the factor fits uint32
        factor = g.cast(g.op("Div", g.u64(1 << I.SOFTMAX_MAX_BIT), total), "uint32")
        probs = g.op("BitShift", g.op("Mul", g.cast(exp16, "uint32"), factor),
                     g.u32(I.SOFTMAX_MAX_BIT - layer.softmax_output_bits), direction="RIGHT")
        return g.op("Min", probs, g.u32(2**layer.softmax_output_bits - 1))

    def heads(self, x: str, heads: int, head_dim: int, transpose_last: bool = False) -> str:
        g = self.g
        x = g.op("Reshape", x, g.i64([0, 0, heads, head_dim]))
        return g.op("Transpose", x, perm=[0, 2, 3, 1] if transpose_last else [0, 2, 1, 3])

    def layer(self, i: int, L: IntLayer, h: str, h_scale: torch.Tensor, h_bound: float, mask_min: str,
              hidden: int) -> tuple[str, torch.Tensor, float]:
        g, enc = self.g, self.enc
        d = hidden // L.num_heads
        q_in = self.requant(h, h_bound, h_scale, L.query.input_scale, 8, out="uint8")
        self.emit_u8(f"layer{i}.attention_input", q_in)
        k_in = self.requant(h, h_bound, h_scale, L.key.input_scale, 8, out="uint8")
        v_in = self.requant(h, h_bound, h_scale, L.value.input_scale, 8, out="uint8")
        q8 = self.requant(*self.linear(q_in, L.query), L.query.input_scale * L.query.weight_scale, L.q_scale, 8,
                          out="uint8")
        k8 = self.requant(*self.linear(k_in, L.key), L.key.input_scale * L.key.weight_scale, L.k_scale, 8,
                          out="uint8")
        v8 = self.requant(*self.linear(v_in, L.value), L.value.input_scale * L.value.weight_scale, L.v_scale, 8,
                          out="uint8")
        q_heads = self.heads(q8, L.num_heads, d)
        self.emit_u8(f"layer{i}.query", q_heads)
        zp = g.const(np.uint8(128), np.uint8)
        scores = g.op("MatMulInteger", q_heads, self.heads(k8, L.num_heads, d, transpose_last=True), zp, zp)
        s_in = self.requant(scores, 127.0**2 * d, L.q_scale * L.k_scale * enc.scaling, L.softmax_input_scale,
                            L.softmax_input_bits)
        s_in = g.op("Min", s_in, mask_min)
        probs = self.softmax_from_table(s_in, L) if self.tables else self.softmax(s_in, L)
        self.emit(f"layer{i}.probs", g.cast(probs, "int64"))
        context = g.op("MatMulInteger", g.cast(probs, "uint8"), self.heads(v8, L.num_heads, d),
                       g.const(np.uint8(0), np.uint8), zp)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), g.i64([0, 0, -1]))
        p_scale = torch.tensor(1 / 2**L.softmax_output_bits, dtype=torch.float64)
        # Σ probs <= 2^8 (floor(e · floor(2^32 / Σe) / 2^24) summed), |v| <= 127
        ao_in = self.requant(context, 2.0**L.softmax_output_bits * 127, p_scale * L.v_scale,
                             L.attention_output.input_scale, 8, out="uint8")
        self.emit_u8(f"layer{i}.attention_output_input", ao_in)
        ao = L.attention_output
        ln = L.ln_attention
        ln_in = self.requant(*self.linear(ao_in, ao), ao.input_scale * ao.weight_scale, ln.input_scale,
                             ln.input_bits, residual=(h, h_bound, h_scale))
        h1, h1_scale, h1_bound = self.layernorm(ln_in, ln, hidden)
        it = L.intermediate
        i_acc, i_bound = self.linear(self.requant(h1, h1_bound, h1_scale, it.input_scale, 8, out="uint8"), it)
        g_in = self.requant(i_acc, i_bound, it.input_scale * it.weight_scale, L.gelu_input_scale,
                            L.gelu_input_bits)
        fo = L.ffn_output
        if self.tables:  # i-GELU and the requantization to the next GEMM's uint8 operand: one lookup
            n = 2 ** (L.gelu_input_bits - 1) - 1
            o_u8 = g.op("Gather", g.const(gelu_requant_table(L), np.uint8, "gelu_table"),
                        g.cast(g.op("Add", g_in, g.i64(n)), "int32"), axis=0)
        else:
            gl, g_scale, g_bound = self.gelu(g_in, L.gelu_input_scale)
            o_u8 = self.requant(gl, g_bound, g_scale, fo.input_scale, 8, out="uint8")
        self.emit_u8(f"layer{i}.ffn_output_input", o_u8)
        ln = L.ln_ffn
        ln_in = self.requant(*self.linear(o_u8, fo), fo.input_scale * fo.weight_scale,
                             ln.input_scale, ln.input_bits, residual=(h1, h1_bound, h1_scale))
        h2, h2_scale, h2_bound = self.layernorm(ln_in, ln, hidden)
        self.emit(f"layer{i}.output", h2)
        return h2, h2_scale, h2_bound

    def build(self) -> tuple[bytes, torch.Tensor | None]:
        """The ONNX model bytes; inputs ``embedding_codes`` int64 [b, n, H] (the embedding sum on the first
        LayerNorm's input grid) and ``attention_mask`` int64 [b, n]; output ``head_input``: the pooler's int32
        accumulator (BERT) or the first token's codes (RoBERTa), plus the recorded codes when ``record``.
        Also returns the scale of ``head_input``."""
        import onnx
        from onnx import TensorProto, helper

        g, enc = self.g, self.enc
        hidden = enc.ln_embedding.weight.numel()
        mask = "attention_mask"
        softmax_min = -(2 ** (max(L.softmax_input_bits for L in enc.layers) - 1) - 1) if enc.layers else 0
        big = 1 << 40
        keep = g.op("Sub", g.i64(1), mask)  # 1 where masked
        mask_min = g.op("Unsqueeze", g.op("Add", g.op("Mul", keep, g.i64(softmax_min - big)), g.i64(big)),
                        g.i64([1, 2]))
        # per layer its own grid minimum: Min with the layer's -(2^(b-1) - 1) (all layers share the bits here)
        if any(L.softmax_input_bits != enc.layers[0].softmax_input_bits for L in enc.layers):
            raise _refuse("layers with different softmax input widths")
        h, h_scale, h_bound = self.layernorm("embedding_codes", enc.ln_embedding, hidden)
        self.emit("embedding.output", h)
        for i, L in enumerate(enc.layers):
            h, h_scale, h_bound = self.layer(i, L, h, h_scale, h_bound, mask_min, hidden)
        first = g.op("Gather", h, g.i64(0), axis=1)
        if enc.pooler is None:
            g.op("Identity", first, out="head_input")
            head_scale = h_scale
        else:
            p = enc.pooler
            cls_codes = self.requant(first, h_bound, h_scale, p.input_scale, 8, out="uint8")
            self.emit_u8("pooler.input", cls_codes)
            g.op("Identity", g.cast(self.linear(cls_codes, p)[0], "int64"), out="head_input")
            head_scale = p.input_scale * p.weight_scale
        outputs = [helper.make_tensor_value_info("head_input", TensorProto.INT64, None)]
        outputs += [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n, _ in self.outputs]
        inputs = [helper.make_tensor_value_info("embedding_codes", TensorProto.INT64, ["batch", "seq", hidden]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])]
        graph = helper.make_graph(g.nodes, "lowbit_int8_encoder", inputs, outputs, g.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="lowbit.deploy.int8_ort")
        model.ir_version = 9
        del onnx  # ORT checks the graph when it loads it (outputs carry no static shapes)
        return model.SerializeToString(), head_scale


#: how i-exp (with its 16-bit requantization) and i-GELU (with the requantization after it) run: ``tables``, one
#: lookup per element in a table of the exact integer function over every input code (16-bit inputs: 2^16 entries
#: at most, computed at conversion by the same formulas), or ``ops``, the formulas op by op
ELEMENTWISE = ("tables", "ops")

#: Newton steps unrolled in the integer square root (from 2^ceil(bits/2) <= 2·sqrt(n) the error falls
#: quadratically: 6-7 steps reach floor(sqrt(n)) for every n < 2^63; tested against math.isqrt)
NEWTON_STEPS = 8


class OrtIntegerEncoder:
    """The integer program of an ``IntegerEncoder`` run by ONNX Runtime (see the module docstring)."""

    def __init__(self, encoder: IntegerEncoder, threads: int = 1, spinning: bool = False, elementwise: str = "tables"):
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:  # pragma: no cover - the deploy extra
            raise LowbitConfigError("deploy backend int8_ort needs onnxruntime and onnx (pip install 'lowbit[deploy]')"
                                    ) from e
        self.encoder, self.threads, self.spinning = encoder, threads, spinning
        self.elementwise = elementwise
        self.model_bytes, self.head_scale = _Program(encoder, record=False, elementwise=elementwise).build()
        self.session = self._session(self.model_bytes)
        self._record_session = None

    def _session(self, model_bytes: bytes):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if not self.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])

    @torch.no_grad()
    def embedding_codes(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> np.ndarray:
        """The one float -> int step, as the reference executor: the 8-bit embedding rows summed by the model's
        embedding module, quantized onto the first LayerNorm's input grid."""
        ln = self.encoder.ln_embedding
        x = self.encoder._embedding_sum(input_ids, token_type_ids)
        return I.quantize_symmetric(x, ln.input_scale, ln.input_bits).numpy().astype(np.int64)

    def run(self, codes: np.ndarray, attention_mask: np.ndarray, record: dict | None = None) -> np.ndarray:
        feeds = {"embedding_codes": codes, "attention_mask": attention_mask.astype(np.int64)}
        if record is None:
            return self.session.run(["head_input"], feeds)[0]
        if self._record_session is None:
            prog = _Program(self.encoder, record=True, elementwise=self.elementwise)
            model_bytes, _ = prog.build()
            self._record_session = (self._session(model_bytes), [n for n, _ in prog.outputs])
        sess, names = self._record_session
        values = sess.run(["head_input", *names], feeds)
        record.update({n: torch.from_numpy(v) for n, v in zip(names, values[1:])})
        return values[0]

    def head(self, head_input: np.ndarray) -> torch.Tensor:
        """The float head on the dequantized integer output (as the reference executor)."""
        model = self.encoder.model
        x = torch.from_numpy(head_input).to(torch.float64) * self.head_scale
        if self.encoder.pooler is None:
            return model.classifier(x[:, None].float())
        return model.classifier(torch.tanh(x.float()))

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, record: dict | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        codes = self.embedding_codes(input_ids, token_type_ids)
        return self.head(self.run(codes, attention_mask.numpy(), record))

    def stats(self) -> dict[str, Any]:
        import onnx

        model = onnx.load_from_string(self.model_bytes)
        ops: dict[str, int] = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        return {"onnx_bytes": len(self.model_bytes), "nodes": len(model.graph.node), "ops": ops}


def convert(model: torch.nn.Module, threads: int | None = None) -> OrtIntegerEncoder:
    check_integer_weights(model, "int8_ort")
    return OrtIntegerEncoder(IntegerEncoder.from_model(model), threads=threads or torch.get_num_threads())


def ibert_from_float(model: torch.nn.Module, calibration: list[dict[str, torch.Tensor]]) -> torch.nn.Module:
    """A float classifier made an I-BERT fake-quant model (``quantizer=ibert``, ``approximation=ibert``, 8-bit
    everything) in place, its static ranges observed on ``calibration`` batches (train-mode forwards, no
    gradient, dropout off), returned in eval mode: what ``python -m lowbit.bench ibert_inference`` deploys on
    models it has no trained run of (speed does not depend on the values)."""
    from lowbit.algorithms.ibert.approximation import IntegerApproximation
    from lowbit.algorithms.ibert.recipe import IBertRecipe
    from lowbit.builder import prepare_model
    from lowbit.quant import PerModuleBits

    methods = {"bit_assignment": PerModuleBits(bits=8, word_embedding=8, position_embedding=8,
                                               token_type_embedding=8, pooler=8),
               "quantizer": IBertRecipe(), "approximation": IntegerApproximation()}
    for group, m in methods.items():
        m.group, m.option = group, type(m).__name__
    prepare_model(model, methods)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    saved = [d.p for d in dropouts]
    for d in dropouts:
        d.p = 0.0
    model.train()
    with torch.no_grad():
        for batch in calibration:
            model(**batch)
    for d, p in zip(dropouts, saved):
        d.p = p
    return model.eval()
