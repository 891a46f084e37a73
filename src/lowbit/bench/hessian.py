"""Top Hessian eigenvalue per encoder layer: lowbit vs PyHessian on the same model and batches.

PyHessian (Yao et al.; ``pip install lowbit[bench]``) builds one ``hessian`` object per block
(one forward/backward with ``create_graph`` each, other parameters frozen) and runs power
iteration with its relative tolerance. lowbit builds each batch's gradient graph once for all
blocks and runs Lanczos with the same tolerance; power iteration with lowbit's graph reuse is timed
too, so the JSON says where the speed comes from, and Lanczos at a 10x looser tolerance shows
whether it would still be as accurate as PyHessian. PyHessian is also run to tol/100 for the agreement of the two
implementations, apart from where its change-based stop leaves it at the shared tolerance. Every result
is compared with a Lanczos run to 1e-8 (which side a disagreement comes from). Writes JSON with
the per-block eigenvalues, the relative difference to PyHessian, and the time ratios
(goal: within 1%, >= 3x faster). All timed runs are interleaved in one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import LowbitConfigError
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


def _batches(model_name: str, n_batches: int, batch_size: int, seq_len: int,
             checkpoint: str | None = None) -> tuple[nn.Module, list[dict]]:
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
    if checkpoint:
        from lowbit.models import load_finetuned_weights

        load_finetuned_weights(model, checkpoint, option="--checkpoint")
    return model, analysis_batches(dm, 1.0, batch_size, n_batches, seed=0)


#: lowbit variants timed against PyHessian: (label, hessian.method, tolerance factor)
VARIANTS = (
    ("lanczos", "lanczos", 1.0),          # the default of lowbit.hessian, same tol
    ("power", "power", 1.0),              # the Q-BERT/PyHessian algorithm with lowbit's graph reuse
    ("lanczos_tol_x10", "lanczos", 10.0),  # 10x looser tol: is it still as accurate as PyHessian?
)


def run(model_name: str = "minilm_l6", n_batches: int = 2, batch_size: int = 16, seq_len: int = 64,
        tol: float = 1e-3, max_iter: int = 100, layers: int | None = None, threads: int | None = None,
        checkpoint: str | None = None, repeats: int = 1) -> dict:
    if threads:
        torch.set_num_threads(threads)
    model, batches = _batches(model_name, n_batches, batch_size, seq_len, checkpoint)
    eager_attention(model).eval()
    blocks = hessian_blocks(model, ["layer"])[:layers]
    # reference: Lanczos run far past the tolerance, to say which side a disagreement comes from
    reference = block_spectrum(model, batches, blocks, "lanczos", 1e-8, 200, summed=False)
    # PyHessian converged further (tol/100): agreement of the two implementations, apart from where
    # power iteration's change-based stop leaves PyHessian at the shared tolerance
    theirs_tight = pyhessian_blocks(model, batches, blocks, tol / 100, max(max_iter, 1000), seed=0)
    timings: dict[str, list[float]] = {}
    ours: dict[str, dict] = {}
    theirs: dict[str, list[float]] = {}
    for _ in range(repeats):  # interleaved: machine load hits every contender alike
        for label, method, factor in VARIANTS:
            t0 = time.perf_counter()
            ours[label] = block_spectrum(model, batches, blocks, method, tol * factor, max_iter, summed=False)
            timings.setdefault(label, []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = pyhessian_blocks(model, batches, blocks, tol, max_iter, seed=0)
        timings.setdefault("pyhessian", []).append(time.perf_counter() - t0)
    seconds = {k: min(v) for k, v in timings.items()}  # best of the repeats
    per_block = {}
    for b in blocks:
        ph = theirs[b.name]
        ref = reference[b.name]["per_batch"]
        entry = {"pyhessian": ph, "pyhessian_tight": theirs_tight[b.name], "reference_lanczos_tol1e-8": ref}
        for label in ours:
            values = ours[label][b.name]["per_batch"]
            entry[f"lowbit_{label}"] = values
            entry[f"lowbit_{label}_hvps"] = ours[label][b.name]["hvps"]
            entry[f"rel_diff_{label}_vs_pyhessian"] = [abs(v - p) / abs(p) for v, p in zip(values, ph)]
            entry[f"rel_diff_{label}_vs_pyhessian_tight"] = [abs(v - p) / abs(p) for v, p in zip(values, theirs_tight[b.name])]
        per_block[b.name] = entry
    worst = {m: max(max(e[f"rel_diff_{m}_vs_pyhessian"]) for e in per_block.values()) for m in ours}
    worst_tight = {m: max(max(e[f"rel_diff_{m}_vs_pyhessian_tight"]) for e in per_block.values()) for m in ours}
    ref_err = {}
    for label in ["pyhessian", "pyhessian_tight", *(f"lowbit_{m}" for m in ours)]:
        ref_err[label] = max(abs(v - r) / abs(r) for e in per_block.values()
                             for v, r in zip(e[label], e["reference_lanczos_tol1e-8"]))
    return {
        "benchmark": "hessian", "model": model_name, "checkpoint": checkpoint, "n_batches": n_batches,
        "batch_size": batch_size, "seq_len": seq_len, "tol": tol, "max_iter": max_iter,
        "blocks": [b.name for b in blocks], "repeats": repeats,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "seconds": seconds, "seconds_all_repeats": timings,
        "hvps": {m: sum(e[f"lowbit_{m}_hvps"] for e in per_block.values()) for m in ours},
        **{f"time_ratio_pyhessian_over_lowbit_{m}": seconds["pyhessian"] / seconds[m] for m in ours},
        "tol_factor": {label: factor for label, _, factor in VARIANTS},
        "max_rel_diff_vs_pyhessian": worst,
        "max_rel_diff_vs_pyhessian_tight": worst_tight,
        "max_rel_err_vs_tight_lanczos": ref_err,
        "goal": {"max_rel_diff": 0.01, "time_ratio": 3.0},
        "per_block": per_block,
    }


def parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m lowbit.bench hessian``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm_l6", help="model config option (minilm_l6, tiny, ...)")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--layers", type=int, default=None, help="only the first N encoder layers")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--checkpoint", default=None, help="fine-tuned lowbit checkpoint (the issue's setting); default: pretrained")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the best time of each is reported")
    p.add_argument("--out", default="bench_results/hessian.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    try:
        result = run(a.model, a.batches, a.batch_size, a.seq_len, a.tol, a.max_iter, a.layers, a.threads,
                     a.checkpoint, a.repeats)
    except LowbitConfigError as e:
        raise SystemExit(f"lowbit: error: {e}") from None
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("seconds", "time_ratio", "max_rel", "hvps"))},
                     indent=2))
    print(f"written to {a.out}")
    return result
