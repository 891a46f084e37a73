"""Evaluation attention time with the adaptive span mask: full masked [L, L] path vs trimmed (banded) path.

MiniLM-L6's attention shapes (12 heads of 32 dims; ``--heads``, ``--head-dim``), random Q, K, V, batch 8,
one thread, at sequence lengths 128 and 512. For each reach (span + ramp, the farthest key that can still
get weight, W + 1) both paths run ``lowbit.attention.lowbit_attention_forward`` with the same
``AdaptiveSpanMask`` in the ``probs`` slot, trimming off (softmax over every key, then the mask) and on
(keys farther than W never multiplied); the two are timed interleaved so machine noise hits both, and
their outputs compared. Writes JSON with the median seconds, the time ratio, the ratio of attention
products (L·(block + 2W) vs L²) and the largest output difference.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lowbit.algorithms.attention_span import AdaptiveSpanMask
from lowbit.attention import attention_hooks, band_block, lowbit_attention_forward


def _attention(heads: int, max_span: int, reach: int) -> tuple[nn.Module, AdaptiveSpanMask]:
    """A stand-in self-attention module with a span mask whose heads all reach ``reach`` tokens (z + R)."""
    ramp = max(1, reach // 4)
    mask = AdaptiveSpanMask(heads, max_span, ramp, init=(reach - ramp) / max_span)
    module = nn.Module()
    attention_hooks(module).add("probs", "attention_span", mask)
    return module.eval(), mask


def _products(length: int, window: int) -> int:
    """Query-key pairs the path evaluation takes multiplies: banded (blocks padded to a whole number) or L²."""
    block = band_block(window, length)
    return length**2 if block is None else -(-length // block) * block * (block + 2 * window)


def run(seq_lens=(128, 512), reaches=(16, 32, 64), batch_size: int = 8, heads: int = 12, head_dim: int = 32,
        repeats: int = 5, warmup: int = 1, threads: int | None = 1) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows = []
    for length in seq_lens:
        q, k, v = (torch.randn(batch_size, heads, length, head_dim) for _ in range(3))
        additive = torch.zeros(batch_size, 1, length, length)  # no padding (what eager attention gets)
        for reach in reaches:
            if reach > length:
                continue
            module, mask = _attention(heads, length, reach)
            times: dict[str, list[float]] = {"full": [], "trimmed": []}
            outs = {}
            with torch.no_grad():
                for i in range(warmup + repeats):
                    for path, samples in times.items():  # interleaved
                        mask.trim = path == "trimmed"
                        t0 = time.perf_counter()
                        outs[path] = lowbit_attention_forward(module, q, k, v, additive, head_dim ** -0.5)[0]
                        if i >= warmup:
                            samples.append(time.perf_counter() - t0)
            window = mask.window()
            med = {p: statistics.median(t) for p, t in times.items()}
            rows.append({
                "seq_len": length, "reach": reach, "ramp": mask.ramp, "window": window,
                "block": band_block(window, length),  # None: the band would not pay, both rows ran the full path
                "median_s": med, "all_s": times, "time_ratio_trimmed_over_full": med["trimmed"] / med["full"],
                "products_ratio": _products(length, window) / length**2,
                "max_abs_diff": float((outs["trimmed"] - outs["full"]).abs().max()),
            })
    return {
        "benchmark": "attention_span", "batch_size": batch_size, "heads": heads, "head_dim": head_dim,
        "repeats": repeats, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "rows": rows,
    }


def parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m lowbit.bench attention_span``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--reaches", type=int, nargs="+", default=[16, 32, 64],
                   help="span + ramp in tokens (the farthest key that can get weight, W + 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="length 128 only, 3 repeats (a smoke run)")
    p.add_argument("--out", default="experiments/edgebert/results/attention_span_bench.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    seq_lens, repeats = ([128], 3) if a.quick else (a.seq_lens, a.repeats)
    result = run(seq_lens, a.reaches, a.batch_size, a.heads, a.head_dim, repeats, threads=a.threads)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    for r in result["rows"]:
        print(f"L={r['seq_len']:4d} reach={r['reach']:3d}: full {r['median_s']['full'] * 1e3:7.2f} ms, trimmed "
              f"{r['median_s']['trimmed'] * 1e3:7.2f} ms, ratio {r['time_ratio_trimmed_over_full']:.2f} "
              f"(products {r['products_ratio']:.2f}), max |diff| {r['max_abs_diff']:.1e}")
    print(f"written to {a.out}")
    return result


if __name__ == "__main__":
    main()
