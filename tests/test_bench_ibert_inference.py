"""``python -m lowbit.bench ibert_inference`` on a tiny random BERT: JSON structure, ratios, logit errors; the
kernel-study graphs (integer softmax, requantization, u8u8 MatMulInteger) are exact."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lowbit.bench import ibert_inference as ib
from lowbit.registry import Registry

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROUNDS = 2


def tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        num_labels=2)  # bert-base vocabulary: the SST-2 token ids fit
    return BertForSequenceClassification(config).eval(), {"source": "tiny random BertConfig (test)"}


def run_cli(tmp_path, monkeypatch, *extra: str) -> dict:
    monkeypatch.setitem(ib.MODELS, "tiny", tiny_bert)
    out = tmp_path / "ibert_inference.json"
    ib.main(["--models", "tiny", "--seq", "32", "--batch", "1", "--threads", "1", "--rounds", str(ROUNDS),
             "--warmup", "1", "--gap-ms", "0", "--out", str(out), *extra])
    return json.loads(out.read_text())


def check_row(row: dict, engines: list[str]) -> None:
    assert set(row["engines"]) == set(engines)
    assert row["batch"] == 1 and row["threads"] == 1 and row["seq"] == 32
    assert row["inputs"]["padded_to"] == 32 and len(row["inputs"]["real_tokens_per_row"]) == 1
    assert len(row["load_average"]["before"]) == 3
    lat = {n: e["latency_s"] for n, e in row["engines"].items()}
    for n, e in row["engines"].items():
        rounds = e["latency_s"]["rounds"]
        assert len(rounds) == ROUNDS and all(t > 0 for t in rounds)
        assert e["latency_s"]["min"] == min(rounds)
        assert e["latency_s"]["median"] == pytest.approx(statistics.median(rounds))
        # every ratio recomputed from the measured latencies
        assert e["speedup_vs_fp32"] == pytest.approx(lat[ib.REFERENCE]["median"] / lat[n]["median"])
        peers = [p for p in engines if p != n]
        for p in peers:
            assert e[f"speedup_vs_{p}"] == pytest.approx(lat[p]["median"] / lat[n]["median"])
            assert e["speedup_from_min"][p] == pytest.approx(lat[p]["min"] / lat[n]["min"])
        assert f"speedup_vs_{n}" not in e and set(e["speedup_from_min"]) == set(peers)
        err = e["logit_error"]
        assert math.isfinite(err["max_abs"]) and 0 <= err["mean_abs"] <= err["max_abs"]
        bd = e["time_breakdown"]
        assert bd is not None and "error" not in bd, bd
        assert bd["gemm_fraction"] > 0
        assert bd["gemm_fraction"] + bd["fused_attention_fraction"] + bd["other_fraction"] == pytest.approx(1, abs=1e-3)
    errs = {n: e["logit_error"]["max_abs"] for n, e in row["engines"].items()}
    assert errs[ib.REFERENCE] == 0
    assert errs["ort_fp32"] < 1e-4  # same FP32 math, another runtime
    for n in ("torch_ao_dynamic_int8", "ort_dynamic_int8", "int8_ort"):
        if n in errs:
            assert errs[n] < 0.05, errs  # int8 weights and activations: loose but finite (logits are ~0.04 here)
    if "int8_ort" in row["engines"]:  # an integer engine: every op but the GEMMs is an integer elementwise op
        bd = row["engines"]["int8_ort"]["time_breakdown"]
        assert bd["gemm_ops"] == ["MatMulInteger"] and "MatMul" not in bd["top_ops_fraction"], bd
        assert 0 < bd["gemm_fraction"] < 1


def test_benchmark_json(tmp_path, monkeypatch):
    result = run_cli(tmp_path, monkeypatch)
    engines = list(ib.ENGINES)
    assert {"fp32_eager", "torch_ao_dynamic_int8", "ort_fp32", "ort_dynamic_int8"} <= set(engines)
    assert result["benchmark"] == "ibert_inference"
    isa = result["machine"]["isa"]
    assert {"avx2", "avx512f", "vnni"} <= set(isa) and all(isinstance(v, bool) for v in isa.values())
    assert result["versions"]["torch"] == torch.__version__ and result["versions"]["onnxruntime"]
    assert len(result["load_average"]["before"]) == 3 and len(result["load_average"]["after"]) == 3
    assert result["protocol"]["rounds"] == ROUNDS
    assert set(result["engines"]) == set(engines)
    qd = result["engines"]["ort_dynamic_int8"]["settings"]["quantize_dynamic"]
    assert qd["weight_type"] == "QInt8" and {"per_channel", "reduce_range"} <= set(qd)
    assert result["engines"]["ort_fp32"]["settings"]["export"]["exporter"] == "torchscript"
    assert result["protocol"]["ort_intra_op_spinning"] is False
    assert result["engines"]["ort_fp32"]["settings"]["session"]["config_entries"] == ib.ORT_NO_SPIN
    # lowbit's integer engine is one of them
    assert "int8_ort" in engines and result["engines_absent"] == {}
    ie = result["engines"]["int8_ort"]["settings"]
    assert ie["elementwise"] == "tables" and ie["ops"]["MatMulInteger"] == 2 * 8 + 1 and "MatMul" not in ie["ops"]
    assert len(result["results"]) == 1
    check_row(result["results"][0], engines)
    assert set(result["summary"]["tiny/batch1/threads1"]) == set(engines)


def test_a_registered_engine_is_benchmarked(tmp_path, monkeypatch):
    """One ``register`` call plugs an engine in: timed, compared with every peer, no longer listed as absent."""
    registry = Registry("ibert_inference engine")
    for name, builder in ib.ENGINES.items():
        registry.register(name, builder)
    monkeypatch.setattr(ib, "ENGINES", registry)
    monkeypatch.setattr(ib, "DESCRIPTIONS", dict(ib.DESCRIPTIONS))

    def int8_cpu(ctx: ib.EngineContext) -> ib.Engine:  # a stand-in: the FP32 model, returning torch logits
        def run(ids, mask):
            with torch.inference_mode():
                return ctx.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        return ib.Engine(run, {"stand_in": True})

    ib.register("int8_cpu", int8_cpu, description="test stand-in")
    result = run_cli(tmp_path, monkeypatch, "--engines", "fp32_eager,ort_dynamic_int8,int8_cpu", "--profile-runs", "0")
    row = result["results"][0]
    assert set(row["engines"]) == {"fp32_eager", "ort_dynamic_int8", "int8_cpu"}
    e = row["engines"]["int8_cpu"]
    assert e["logit_error"]["max_abs"] < 1e-6 and e["time_breakdown"] is None
    lat = {n: x["latency_s"]["median"] for n, x in row["engines"].items()}
    assert e["speedup_vs_ort_dynamic_int8"] == pytest.approx(lat["ort_dynamic_int8"] / lat["int8_cpu"])
    assert row["engines"]["ort_dynamic_int8"]["speedup_vs_int8_cpu"] == pytest.approx(
        lat["int8_cpu"] / lat["ort_dynamic_int8"])


def test_kernel_study_graphs_are_exact():
    """The ONNX expressions kernels.md recommends compute what they claim, on any CPU."""
    sem = ib.semantics()
    assert sem["Div(x, 4) int32"] == [-1, -1, -1, 0, 0, 0, 1, 1]  # truncation toward zero
    assert sem["Mod(x, 4, fmod=0)"] == [int(v) for v in np.array(sem["x"]) % 4]  # divisor's sign
    assert sem["BitShift int32"].startswith("rejected")
    soft = ib.softmax_study(1, shape=(2, 2, 16, 16))
    for v in ("int32", "int64"):
        assert soft["variants"][v]["exact_vs_numpy_reference"], v
        assert soft["variants"][v]["max_abs_err_vs_float_softmax"] < 0.02, soft["variants"][v]
    req = ib.requant_study(1, shape=(16, 64))
    for v in ("div_offset", "mod_floor", "uint_shift"):
        assert req["variants"][v]["exact_round_half_up"] and req["variants"][v]["exact_at_int32_extremes"], v
    assert req["variants"]["int32_two_step"]["max_abs_code_err"] <= 1
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 384)).astype(np.uint8)
    b = rng.integers(0, 256, (384, 48)).astype(np.uint8)
    sess = ib.ort_session(ib._matmul_integer_model(32, 384, "uint8", b, (128, 128)), 1)
    ref = (a.astype(np.int64) - 128) @ (b.astype(np.int64) - 128)
    assert (sess.run(None, {"A": a})[0] == ref).all()  # u8u8 with zero points: exact s8 x s8 products
    assert ib.check_reference_int64()


def test_table3_reads_the_one_thread_seq128_ratios_of_the_benchmark(tmp_path, monkeypatch):
    from lowbit.algorithms.ibert.tables import BENCH_JSON_ENV, table3_rows
    from lowbit.errors import LowbitConfigError

    def setting(model, batch, threads, seq, ratio):
        return {"model": model, "batch": batch, "threads": threads, "seq": seq,
                "engines": {"fp32_eager": {"speedup_vs_fp32": 1.0}, "int8_ort": {"speedup_vs_fp32": ratio},
                            "ort_dynamic_int8": {"speedup_vs_fp32": 2 * ratio}}}

    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"results": [setting("bert_base", 1, 1, 128, 0.5), setting("bert_base", 1, 2, 128, 9.0),
                                            setting("bert_base", 8, 1, 64, 9.0), setting("minilm_l6", 8, 1, 128, 0.25)]}))
    monkeypatch.setenv(BENCH_JSON_ENV, str(path))
    assert table3_rows() == {"bert_base_bs1": {"int8_engine": 0.5, "ort_dynamic_int8": 1.0},
                             "minilm_l6_bs8": {"int8_engine": 0.25, "ort_dynamic_int8": 0.5}}
    monkeypatch.setenv(BENCH_JSON_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(LowbitConfigError, match="missing.json .not found.: run python -m lowbit.bench ibert_inference"):
        table3_rows()
    path.write_text("{}")
    monkeypatch.setenv(BENCH_JSON_ENV, str(path))
    with pytest.raises(LowbitConfigError, match="is not an ibert_inference benchmark JSON"):
        table3_rows()
