"""Computed I-BERT tables (``python -m lowbit.tables ibert_table1``)."""

from __future__ import annotations

from lowbit.algorithms.ibert import integer as I


def table1_rows() -> dict[str, dict[str, float]]:
    """I-BERT Table 1: L2 / L∞ distance of each GELU approximation from GELU on [-4, 4], and i-exp's max error."""
    errors = I.gelu_approximation_errors()
    rows = {name: {"L2": e["L2"], "Linf": e["Linf"]} for name, e in errors.items()}
    rows["i_exp"] = {"Linf": I.i_exp_max_error()}
    return rows


#: the benchmark JSON Table 3 reads (``python -m lowbit.bench ibert_inference`` writes it)
BENCH_JSON_ENV = "LOWBIT_IBERT_BENCH_JSON"
BENCH_JSON_DEFAULT = "experiments/ibert/results/ibert_inference.json"
#: Table 3 columns: engine name in the benchmark -> metric
TABLE3_ENGINES = {"int8_ort": "int8_engine", "ort_dynamic_int8": "ort_dynamic_int8",
                  "torch_ao_dynamic_int8": "torch_ao_dynamic_int8"}


def table3_rows() -> dict[str, dict[str, float]]:
    """I-BERT Table 3 at CPU scale: speed-up over FP32 torch eager (median latency ratio) of lowbit's integer engine
    and of the dynamic-int8 peers, per model and batch at sequence 128, one thread, read from the benchmark JSON
    (``$LOWBIT_IBERT_BENCH_JSON``, default ``experiments/ibert/results/ibert_inference.json`` under the working
    directory). Rows ``<model>_bs<batch>``."""
    import json
    import os
    from pathlib import Path

    from lowbit.errors import LowbitConfigError, check

    path = Path(os.environ.get(BENCH_JSON_ENV, BENCH_JSON_DEFAULT))
    check(path.is_file(), f"ibert_table3 reads the benchmark JSON {path} (not found): run "
                          f"python -m lowbit.bench ibert_inference, or set {BENCH_JSON_ENV}")
    try:
        result = json.loads(path.read_text())
        settings = result["results"]
    except (ValueError, KeyError, TypeError) as e:
        raise LowbitConfigError(f"ibert_table3: {path} is not an ibert_inference benchmark JSON ({e})") from None
    rows: dict[str, dict[str, float]] = {}
    for s in settings:
        if s.get("threads") != 1 or s.get("seq") != 128:
            continue
        rows[f"{s['model']}_bs{s['batch']}"] = {metric: s["engines"][engine]["speedup_vs_fp32"]
                                                for engine, metric in TABLE3_ENGINES.items() if engine in s["engines"]}
    return rows
