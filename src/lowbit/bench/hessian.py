"""Top Hessian eigenvalue per encoder layer: lowbit vs PyHessian on the same model and batches.

PyHessian (Yao et al.; ``pip install lowbit[bench]``) builds one ``hessian`` object per block
(one forward/backward with ``create_graph`` each, other parameters frozen) and runs power
iteration with its relative tolerance. lowbit builds each batch's gradient graph once for all
blocks and runs Lanczos (and power iteration) with the same tolerance. Writes JSON with the
per-block eigenvalues, the relative difference to PyHessian, and the time ratio
(goal: within 1%, >= 3x faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from lowbit.hessian.spectrum import block_spectrum, eager_attention, hessian_blocks

KEYS = ("input_ids", "attention_mask", "token_type_ids")


class _PackedInputs(nn.Module):
    """PyHessian calls ``model(inputs)`` with one tensor: pack ids/mask/token types as [3, B, L]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.model(**{k: packed[i] for i, k in enumerate(KEYS)}).logits


def pyhessian_blocks(model: nn.Module, batches: list[dict], blocks, tol: float, max_iter: int, seed: int) -> dict:
    from pyhessian import hessian as PyHessian

    wrapped = _PackedInputs(model)
    criterion = nn.CrossEntropyLoss()
    all_params = list(model.parameters())
    out: dict[str, list[float]] = {b.name: [] for b in blocks}
    for batch in batches:
        packed = torch.stack([batch.get(k, torch.zeros_like(batch["input_ids"])) for k in KEYS])
        for b in blocks:
            wanted = {id(p) for p in b.params}
            for p in all_params:
                p.requires_grad_(id(p) in wanted)
                p.grad = None
            torch.manual_seed(seed)
            h = PyHessian(wrapped, criterion, data=(packed, batch["labels"]), cuda=False)
            eigenvalues, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
            out[b.name].append(float(eigenvalues[0]))
            del h
    for p in all_params:
        p.requires_grad_(True)
        p.grad = None
    return out


def _batches(model_name: str, n_batches: int, batch_size: int, seq_len: int) -> tuple[nn.Module, list[dict]]:
    from lowbit.compose import compose_train
    from lowbit.hessian.analysis import analysis_batches
    from lowbit.pipeline import build

    cfg = compose_train([f"model={model_name}", "data=sst2", f"data.max_length={seq_len}",
                         f"data.max_train_samples={n_batches * batch_size}"], Path("logs") / "bench_hessian")
    spec = build(cfg.model)
    dm = build(cfg.data, tokenizer=spec.load_tokenizer())
    dm.setup("fit")
    torch.manual_seed(0)
    model = spec.build(dm.task.num_labels)
    return model, analysis_batches(dm, 1.0, batch_size, n_batches, seed=0)


def run(model_name: str = "minilm_l6", n_batches: int = 2, batch_size: int = 16, seq_len: int = 64,
        tol: float = 1e-3, max_iter: int = 100, layers: int | None = None, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    model, batches = _batches(model_name, n_batches, batch_size, seq_len)
    eager_attention(model).eval()
    blocks = hessian_blocks(model, ["layer"])[:layers]
    timings, ours = {}, {}
    for method in ("lanczos", "power"):
        t0 = time.perf_counter()
        ours[method] = block_spectrum(model, batches, blocks, method, tol, max_iter, summed=False)
        timings[method] = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = pyhessian_blocks(model, batches, blocks, tol, max_iter, seed=0)
    timings["pyhessian"] = time.perf_counter() - t0
    # reference: Lanczos run to tol 1e-6, to say which side a disagreement comes from
    reference = block_spectrum(model, batches, blocks, "lanczos", 1e-6, 100, summed=False)
    per_block = {}
    for b in blocks:
        ph = theirs[b.name]
        entry = {"pyhessian": ph, "reference_lanczos_tol1e-6": reference[b.name]["per_batch"]}
        for method in ours:
            values = ours[method][b.name]["per_batch"]
            entry[f"lowbit_{method}"] = values
            entry[f"lowbit_{method}_hvps"] = ours[method][b.name]["hvps"]
            entry[f"rel_diff_{method}_vs_pyhessian"] = [abs(v - p) / abs(p) for v, p in zip(values, ph)]
        per_block[b.name] = entry
    worst = {m: max(max(e[f"rel_diff_{m}_vs_pyhessian"]) for e in per_block.values()) for m in ours}
    ref_err = {}
    for label, key in (("pyhessian", "pyhessian"), ("lowbit_lanczos", "lowbit_lanczos"), ("lowbit_power", "lowbit_power")):
        ref_err[label] = max(abs(v - r) / abs(r) for e in per_block.values()
                             for v, r in zip(e[key], e["reference_lanczos_tol1e-6"]))
    return {
        "benchmark": "hessian", "model": model_name, "n_batches": n_batches, "batch_size": batch_size,
        "seq_len": seq_len, "tol": tol, "max_iter": max_iter, "blocks": [b.name for b in blocks],
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "seconds": timings,
        "time_ratio_pyhessian_over_lowbit_lanczos": timings["pyhessian"] / timings["lanczos"],
        "time_ratio_pyhessian_over_lowbit_power": timings["pyhessian"] / timings["power"],
        "max_rel_diff_vs_pyhessian": worst,
        "max_rel_err_vs_tight_lanczos": ref_err,
        "goal": {"max_rel_diff": 0.01, "time_ratio": 3.0},
        "per_block": per_block,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm_l6", help="model config option (minilm_l6, tiny, ...)")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--layers", type=int, default=None, help="only the first N encoder layers")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench_results/hessian.json")
    a = p.parse_args(argv)
    result = run(a.model, a.batches, a.batch_size, a.seq_len, a.tol, a.max_iter, a.layers, a.threads)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("seconds", "time_ratio_pyhessian_over_lowbit_lanczos",
                                             "max_rel_diff_vs_pyhessian", "max_rel_err_vs_tight_lanczos")}, indent=2))
    print(f"written to {a.out}")
    return result
