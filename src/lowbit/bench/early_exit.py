"""Early exit, measured: wall-clock of the exit runner vs the full model, and the cost of threshold curves.

``python -m lowbit.bench early_exit RUN_DIR [--batch 1,32] [--threads 1] [--tolerance 1.0] [--curve-points 100]
[--max-eval-samples N] [--out experiments/edgebert/results/early_exit_bench.json]``

On the run's dev set (its config and ``checkpoints/last.ckpt``, rebuilt through the one model builder):

1. **One plain eval pass** of the fake-quant model that keeps every exit's logits (what training-time evaluation
   does), timed; then the **threshold curve** over K = ``--curve-points`` thresholds, and the exact curve over
   every distinct entropy, from that cache, timed: ``curve_cost_ratio`` = (pass + K-curve) / pass (goal ≤ 1.2).
2. The **threshold** that loses at most ``--tolerance`` points of the main metric on the exact curve (or
   ``--threshold``), and its ``expected_saving`` (DeeBERT's formula).
3. For each batch size: the dev examples in dataset order, each batch padded to its own longest example
   (batch 1: no padding), run by the **full model** and by the **exit runner** at that threshold — the same
   inputs, alternating rounds so machine noise hits both. ``measured_saving`` = 1 − runner / full (median of
   rounds). The runner's predictions and exit layers are checked against the cached curve (``*_equal``
   counts) and at threshold 0 (no exit) the runner's overhead is timed too.

Run it alone: on 2 cores a concurrent job measures contention, not early exit. ``os.getloadavg()`` is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lowbit.errors import check

DEFAULT_OUT = "experiments/edgebert/results/early_exit_bench.json"


def dev_examples(cfg, max_eval_samples: int | None) -> list[dict[str, torch.Tensor]]:
    """The run's (first) dev split, one unpadded example per entry, with labels."""
    from lowbit.deploy.__main__ import dev_loader

    loader = dev_loader(cfg, max_eval_samples)
    examples = []
    for batch in loader:
        for i in range(batch["input_ids"].shape[0]):
            length = int(batch["attention_mask"][i].sum())
            examples.append({k: batch[k][i, :length] for k in ("input_ids", "attention_mask", "token_type_ids")
                             if k in batch} | {"labels": batch["labels"][i]})
    return examples


def batches(examples: list[dict], size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for start in range(0, len(examples), size):
        chunk = examples[start:start + size]
        length = max(int(e["input_ids"].shape[0]) for e in chunk)
        b = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in chunk[0]:
                continue
            fill = pad_id if key == "input_ids" else 0
            b[key] = torch.stack([torch.nn.functional.pad(e[key], (0, length - e[key].shape[0]), value=fill)
                                  for e in chunk])
        b["labels"] = torch.stack([e["labels"] for e in chunk])
        out.append(b)
    return out


def _inputs(b: dict) -> dict:
    return {k: v for k, v in b.items() if k != "labels"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lowbit.bench early_exit", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a finished early_exit=entropy run (checkpoints/last.ckpt, .hydra/)")
    p.add_argument("--batch", default="1,32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=1.0, help="points of the main metric the threshold may lose")
    p.add_argument("--also-tolerances", default="0.2,3,5",
                   help="more operating points (points of loss) whose measured saving is reported too ('' for none)")
    p.add_argument("--threshold", type=float, default=None, help="use this S instead of the tolerance's")
    p.add_argument("--curve-points", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="timed passes over the dev set per engine and batch size")
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT))
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)

    from lowbit.algorithms.early_exit.curve import (
        candidate_thresholds,
        exit_predictions,
        operating_points,
        threshold_curve,
    )
    from lowbit.algorithms.early_exit.runner import ExitRunner
    from lowbit.export.__main__ import load_run_checkpoint

    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    ckpt = a.run_dir / "checkpoints" / "last.ckpt"
    model, methods, cfg = load_run_checkpoint(ckpt)
    model.eval()
    method = methods["early_exit"]
    check(hasattr(method, "eval_outputs") and method.ramps, f"{a.run_dir}: not an early_exit=entropy run")
    examples = dev_examples(cfg, a.max_eval_samples)
    pad_id = int(getattr(model.config, "pad_token_id", 0) or 0)
    labels = torch.stack([e["labels"] for e in examples])
    from lowbit.data.tasks import GLUE_TASKS

    task = GLUE_TASKS.get(cfg.data.task)
    metric = task.main_metric

    # 1. one plain eval pass keeping every exit's logits (batch 32, as training-time evaluation), then curves
    eval_batches = batches(examples, 32, pad_id)
    with torch.inference_mode():
        t0 = time.perf_counter()
        kept = [method.eval_outputs(model(**_inputs(b), output_hidden_states=True), b)["logits"] for b in eval_batches]
        t_pass = time.perf_counter() - t0
    logits = torch.cat(kept)
    t0 = time.perf_counter()
    method.curve_points = a.curve_points
    curve = threshold_curve(logits, labels, method.grid(logits.shape[-1]), metric)  # noqa: F841 - timed
    t_curve = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = threshold_curve(logits, labels, candidate_thresholds(logits), metric)
    t_exact = time.perf_counter() - t0
    base_score = float(exact.score[0])
    if a.threshold is None:
        point = operating_points(exact, (a.tolerance,))[0]
        threshold = point.threshold
    else:
        threshold = a.threshold
    at = threshold_curve(logits, labels, torch.tensor([threshold]), metric)
    cached_preds, cached_layers = exit_predictions(logits, torch.tensor([threshold]))
    result: dict = {
        "run_dir": str(a.run_dir), "task": task.name, "metric": metric, "examples": len(examples),
        "layers": logits.shape[1], "threads": a.threads, "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "curve": {"points": a.curve_points, "seconds_eval_pass": t_pass, "seconds_curve": t_curve,
                  "curve_cost_ratio": (t_pass + t_curve) / t_pass,
                  "exact_thresholds": int(exact.thresholds.numel()), "seconds_exact_curve": t_exact,
                  "exact_curve_cost_ratio": (t_pass + t_exact) / t_pass},
        "threshold": threshold, "tolerance_points": a.tolerance if a.threshold is None else None,
        "score_full": base_score, "score_at_threshold": float(at.score[0]),
        "score_loss_points": 100 * (base_score - float(at.score[0])),
        "expected_saving": float(at.saving[0]),
        "exit_counts": at.exit_counts[0].tolist(),
        "batch_sizes": {},
    }

    # 2. wall-clock: full model vs the exit runner, same batches, alternating rounds
    extra = [float(t) for t in a.also_tolerances.split(",") if t.strip()] if a.threshold is None else []
    points = {"main": threshold}
    for t in extra:
        points[f"tolerance_{t:g}"] = operating_points(exact, (t,))[0].threshold
    runners = {name: ExitRunner(model, s) for name, s in points.items()}
    runners["threshold_0"] = ExitRunner(model, 0.0)
    result["operating_points"] = {}
    for name, s in points.items():
        c = threshold_curve(logits, labels, torch.tensor([s]), metric)
        result["operating_points"][name] = {"threshold": s, "score": float(c.score[0]),
                                            "delta_points": 100 * (float(c.score[0]) - base_score),
                                            "expected_saving": float(c.saving[0]), "measured_saving": {}}
    for size in [int(s) for s in a.batch.split(",")]:
        bs = batches(examples, size, pad_id)

        def full(bs=bs):
            return torch.cat([model(**_inputs(b)).logits for b in bs])

        def exits(runner, bs=bs):
            outs, layers = [], []
            for b in bs:
                outs.append(runner(**_inputs(b)))
                layers.append(runner.exit_layers)
            return torch.cat(outs), torch.cat(layers)

        engines = {"full": full, **{name: (lambda r=r: exits(r)) for name, r in runners.items()}}
        times: dict[str, list[float]] = {name: [] for name in engines}
        with torch.inference_mode():
            full_logits = full()  # warm-up, and the reference predictions
            run_logits, run_layers = exits(runners["main"])
            order = list(engines.items())
            for r in range(a.rounds):
                shift = r % len(order)
                for name, fn in order[shift:] + order[:shift]:
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        preds = run_logits.argmax(-1)
        for name in points:
            result["operating_points"][name]["measured_saving"][str(size)] = 1 - med[name] / med["full"]
        result["batch_sizes"][str(size)] = {
            "seconds_full": med["full"], "seconds_runner": med["main"],
            "seconds_runner_threshold_0": med["threshold_0"], "rounds": times,
            "measured_saving": 1 - med["main"] / med["full"],
            "runner_overhead_at_threshold_0": med["threshold_0"] / med["full"] - 1,
            "score_full": float(_score(metric, full_logits.argmax(-1), labels)),
            "score_runner": float(_score(metric, preds, labels)),
            "predictions_equal_cached_curve": int((preds == cached_preds[:, 0]).sum()),
            "exit_layers_equal_cached_curve": int((run_layers == cached_layers[:, 0]).sum()),
        }
    result["loadavg_before"], result["loadavg_after"] = load_before, os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("batch_sizes", "exit_counts")}, indent=2))
    for size, r in result["batch_sizes"].items():
        print(f"batch {size}: full {r['seconds_full']:.2f}s, runner {r['seconds_runner']:.2f}s, measured saving "
              f"{r['measured_saving']:.3f} (expected {result['expected_saving']:.3f}); {metric} full "
              f"{r['score_full']:.4f} runner {r['score_runner']:.4f}; predictions equal to the cached curve "
              f"{r['predictions_equal_cached_curve']}/{result['examples']}")
    print(f"wrote {a.out}")
    return result


def _score(metric: str, preds: torch.Tensor, labels: torch.Tensor) -> float:
    from lowbit.algorithms.early_exit.curve import column_metric

    return float(column_metric(metric, preds.reshape(-1, 1), labels)[0])


if __name__ == "__main__":
    main()
