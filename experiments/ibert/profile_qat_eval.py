"""Where an I-BERT QAT model's evaluation forward spends its time, against the FP32 model's (MiniLM-L6).

    python experiments/ibert/profile_qat_eval.py [--batch 16] [--seq 64] [--rounds 5] [--threads 1]
        [--out experiments/ibert/results/qat_eval_profile.json] [--logits-out L.pt] [--logits-ref L.pt]

The QAT model is the benchmark's ``ibert_from_float`` (``quantizer=ibert``, ``approximation=ibert``, 8-bit
everything, static ranges observed on the input batch): in evaluation it computes the integer engine's exact
integers (``lowbit.codes``). Reports the median forward time of each model and, for the QAT model, the
inclusive time per module class (forward hooks, one extra forward; a class nested in another, e.g. a
Linear's input quantizer, is counted in both). ``--logits-out`` / ``--logits-ref`` save
and compare the QAT logits bit for bit: a speed change must not change a single logit.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from lowbit.bench.ibert_inference import build_minilm, loadavg, make_inputs
from lowbit.deploy.int8_ort import ibert_from_float


def _median_forward(model, batch, rounds: int) -> float:
    times = []
    with torch.no_grad():
        model(**batch)  # warm-up
        for _ in range(rounds):
            t0 = time.perf_counter()
            model(**batch)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _by_module_class(model, batch) -> dict[str, float]:
    """Inclusive seconds per module class over one forward (nested modules of one class counted once)."""
    totals: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    depth: dict[str, int] = defaultdict(int)
    handles = []
    for module in model.modules():
        if module is model or len(list(module.children())) > 0 and type(module).__module__.startswith("transformers"):
            continue
        name = type(module).__name__

        def pre(mod, args, name=name):
            depth[name] += 1
            if depth[name] == 1:
                starts[id(mod)] = time.perf_counter()

        def post(mod, args, out, name=name):
            depth[name] -= 1
            if depth[name] == 0 and id(mod) in starts:
                totals[name] += time.perf_counter() - starts.pop(id(mod))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return dict(sorted(((k, round(v * 1e3, 1)) for k, v in totals.items()), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("experiments/ibert/results/qat_eval_profile.json"))
    p.add_argument("--logits-out", type=Path)
    p.add_argument("--logits-ref", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fp32, _ = build_minilm()
    ids, mask, _ = make_inputs(args.batch, args.seq, fp32.config.vocab_size)
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    qat = ibert_from_float(copy.deepcopy(fp32), [batch])
    result = {"batch": args.batch, "seq": args.seq, "threads": args.threads, "rounds": args.rounds,
              "loadavg_before": loadavg()}
    result["fp32_s"] = _median_forward(fp32, batch, args.rounds)
    result["qat_eval_s"] = _median_forward(qat, batch, args.rounds)
    result["ratio_qat_over_fp32"] = result["qat_eval_s"] / result["fp32_s"]
    result["qat_ms_by_module_class"] = _by_module_class(qat, batch)
    result["loadavg_after"] = loadavg()
    with torch.no_grad():
        logits = qat(**batch).logits
    if args.logits_out:
        torch.save(logits, args.logits_out)
    if args.logits_ref:
        ref = torch.load(args.logits_ref)
        result["logits_equal_to_ref"] = bool(torch.equal(logits, ref))
        result["max_abs_logit_diff_to_ref"] = float((logits - ref).abs().max())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
