"""Training-step time of TernaryBERT distillation vs plain QAT of the same ternary student.

Same MiniLM-L6 student (2-2-8 TWN, 8-bit activations), same batch (32 x 128): plain QAT takes the
task loss; distillation adds the frozen teacher's forward and the logits + hidden-state +
attention-score losses. Steps alternate between the two. Goal: ratio <= 1.4.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from lowbit.builder import build_model
from lowbit.compose import compose_train


def run(batch_size: int = 32, seq_len: int = 128, steps: int = 8, warmup: int = 2) -> dict:
    torch.manual_seed(0)
    ternary = ["model=minilm_l6", "data=sst2", "quantizer=ternary_twn", "bit_assignment=w2e2"]
    base = build_model(compose_train(["model=minilm_l6", "data=sst2"], "logs/bench")).model
    plain = build_model(compose_train(ternary, "logs/bench"), backbone=copy.deepcopy(base)).model
    # TernaryBERT distillation (logits + hidden + attention scores); the teacher is the float copy
    built = build_model(compose_train([*ternary, "distillation=ternarybert"], "logs/bench"),
                        backbone=copy.deepcopy(base))
    student, distill = built.model, built.methods["distillation"]
    batch = {"input_ids": torch.randint(1000, base.config.vocab_size, (batch_size, seq_len)),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,))}
    plain.train(), student.train()
    opts = {"qat": torch.optim.AdamW(plain.parameters(), lr=1e-5),
            "distill": torch.optim.AdamW(student.parameters(), lr=1e-5)}

    def qat_step():
        plain(**batch).loss.backward()

    def distill_step():
        out = student(**batch, **distill.forward_kwargs("train"))
        sum(distill.losses(out, batch, 0).values()).backward()

    steps_fn = {"qat": qat_step, "distill": distill_step}
    times: dict[str, list[float]] = {k: [] for k in steps_fn}
    for i in range(warmup + steps):
        for name, fn in steps_fn.items():
            t0 = time.perf_counter()
            opts[name].zero_grad(set_to_none=True)
            fn()
            opts[name].step()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"benchmark": "distill_step", "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
            "threads": torch.get_num_threads(), "median_s": med, "all_s": times,
            "ratio_distill_over_qat": med["distill"] / med["qat"], "goal_ratio": 1.4}


def parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m lowbit.bench distill_step``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default="bench_results/distill_step.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    result = run(a.batch_size, a.seq_len, a.steps, a.warmup)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_s", "ratio_distill_over_qat", "goal_ratio")}, indent=2))
    return result
