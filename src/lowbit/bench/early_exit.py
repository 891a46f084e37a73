"""Early exit, measured: wall-clock of the exit runner vs the full model, and the cost of threshold curves.

``python -m lowbit.bench early_exit RUN_DIR [--batch 1,32] [--threads 1] [--tolerance 1.0] [--curve-points 100]
[--max-eval-samples N] [--latency-target-ms 4,6] [--predictor-table entropy] [--out experiments/edgebert/results/early_exit_bench.json]``

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
4. **Per-layer latency at batch 1**: every dev sentence alone through the exit runner at threshold 0 (every
   layer and its off-ramp, ``ExitRunner.clock``) and through the full model, alternating, ``--rounds`` times
   (per-sentence medians): ``latency.per_layer_ms`` (median over sentences; the last layer includes the head).
   With the run's exit-layer predictor (``<run dir>/early_exit/exit_predictor.pt``, fitted here at the threshold
   above): its miss statistics on the dev set, and for each latency target (``--latency-target-ms``, else the run's
   ``early_exit.latency_target_ms``, else 25/50/75/100% of the full model's median) the fraction of sentences within
   it — ``all_layers`` (full model), ``early_exit`` (actual exit, full speed), ``predicted`` (the predicted layers
   scheduled to end at the target; a sentence that must run past them misses it) and ``predicted_stop`` (EdgeBERT's
   code: it leaves at the predicted layer) — each sentence with its own measured layer times
   (``lowbit.algorithms.early_exit.predictor``).

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
    p.add_argument("--latency-target-ms", default=None,
                   help="per-sentence latency targets, comma-separated ms (default: the run's early_exit.latency_target_ms)")
    p.add_argument("--collect-train", type=int, default=None, metavar="N",
                   help="first collect the off-ramp entropies of N training sentences for the exit-layer predictor "
                        "(<run dir>/early_exit/exit_predictor.pt; runs trained without early_exit.predictor lack it)")
    p.add_argument("--predictor-table", choices=("entropy", "exit_layer"), default=None,
                   help="the exit-layer predictor's table (default: the run's early_exit.predictor.table)")
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
    if a.collect_train is not None:
        check(a.collect_train > 0, f"--collect-train must be a positive number of sentences, got {a.collect_train}")
        collect_train_entropies(a.run_dir, model, method, cfg, a.collect_train)
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
    result["latency"], result["predictor"] = latency_report(a, model, examples, pad_id, logits, labels, metric,
                                                            threshold, cached_layers[:, 0], method)
    result["loadavg_before"], result["loadavg_after"] = load_before, os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("batch_sizes", "exit_counts")}, indent=2))
    for size, r in result["batch_sizes"].items():
        print(f"batch {size}: full {r['seconds_full']:.2f}s, runner {r['seconds_runner']:.2f}s, measured saving "
              f"{r['measured_saving']:.3f} (expected {result['expected_saving']:.3f}); {metric} full "
              f"{r['score_full']:.4f} runner {r['score_runner']:.4f}; predictions equal to the cached curve "
              f"{r['predictions_equal_cached_curve']}/{result['examples']}")
    lat = result["latency"]
    print(f"batch 1 per-layer ms (median over sentences, with off-ramp): "
          f"{', '.join(f'{t:.3f}' for t in lat['per_layer_ms'])}; full model {lat['full_model_ms']:.3f} ms")
    if result["predictor"].get("exact") is not None:
        pr = result["predictor"]
        print(f"exit-layer predictor ({pr['table']}, {pr['bins']} bins): exact {pr['exact']:.3f}, mean |miss| "
              f"{pr['mean_abs_miss']:.3f} layers, within ±1 {pr['within_1']:.3f}")
    for target, f in lat["fraction_meeting_target"].items():
        print(f"target {target} ms: " + ", ".join(f"{k} {v:.3f}" for k, v in f.items()))
    print(f"wrote {a.out}")
    return result


class _EvalModule:
    """What ``training_set_entropies`` asks of a LightningModule, for a model loaded from a checkpoint."""

    training, device = False, torch.device("cpu")

    def __init__(self, model):
        self.model = model

    def eval(self):
        self.model.eval()

    def train(self, mode: bool = True):
        self.model.train(mode)

    def __call__(self, batch, mode):
        return self.model(**batch, output_hidden_states=True)


def collect_train_entropies(run_dir: Path, model, method, cfg, max_samples: int) -> Path:
    """The training-set off-ramp entropies of a finished run (no training), as the run itself keeps them when
    ``early_exit.predictor`` is set: ``<run dir>/early_exit/exit_predictor.pt``."""
    from omegaconf import OmegaConf

    from lowbit.algorithms.early_exit.method import PREDICTOR_FILE, training_set_entropies
    from lowbit.builder import build

    data_cfg = OmegaConf.to_container(cfg.data, resolve=False)
    data_cfg["cache_dir"] = None
    datamodule = build(OmegaConf.create(data_cfg), tokenizer=build(cfg.model).load_tokenizer())
    datamodule.check_sources()
    datamodule.setup("fit")
    entropies, rows = training_set_entropies(_EvalModule(model), method, datamodule, max_samples)
    options = method.predictor_options or {"bins": 50, "table": "entropy"}
    path = run_dir / "early_exit" / PREDICTOR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train_entropies": entropies, "train_rows": torch.tensor(rows), "step": -1, **options,
                "max_train_samples": max_samples, "collected_by": "python -m lowbit.bench early_exit --collect-train"},
               path)
    print(f"collected the off-ramp entropies of {len(rows)} training sentences -> {path}")
    return path


def latency_report(a, model, examples: list[dict], pad_id: int, logits: torch.Tensor, labels: torch.Tensor,
                   metric: str, threshold: float, actual_layers: torch.Tensor, method) -> tuple[dict, dict]:
    """Per-layer latency at batch 1 and the latency-target fractions with the run's exit-layer predictor."""
    from lowbit.algorithms.early_exit.curve import entropy
    from lowbit.algorithms.early_exit.method import PREDICTOR_FILE
    from lowbit.algorithms.early_exit.predictor import fit_predictor, latency_target_fractions, predictor_report
    from lowbit.algorithms.early_exit.runner import ExitRunner

    singles = batches(examples, 1, pad_id)
    clocked = ExitRunner(model, 0.0)  # threshold 0: no sentence exits, every layer and off-ramp is timed
    n, n_layers = len(singles), logits.shape[1]
    cumulative = torch.zeros(a.rounds, n, n_layers, dtype=torch.float64)
    embeddings = torch.zeros(a.rounds, n, dtype=torch.float64)
    full = torch.zeros(a.rounds, n, dtype=torch.float64)
    with torch.inference_mode():
        for b in singles[:8]:  # warm-up
            clocked(**_inputs(b))
            model(**_inputs(b))
        for r in range(a.rounds):
            for k, b in enumerate(singles):
                clocked.clock = []
                t0 = time.perf_counter()
                clocked(**_inputs(b))
                marks = torch.tensor(clocked.clock, dtype=torch.float64)
                embeddings[r, k] = 1000 * (marks[0] - t0)
                cumulative[r, k] = 1000 * (marks[1:] - t0)
                t0 = time.perf_counter()
                model(**_inputs(b))
                full[r, k] = 1000 * (time.perf_counter() - t0)
    clocked.clock = None
    cumulative, embeddings, full = cumulative.median(0).values, embeddings.median(0).values, full.median(0).values
    per_layer = torch.diff(cumulative, dim=1, prepend=embeddings.unsqueeze(1))
    full_median = float(full.median())
    if a.latency_target_ms is not None:
        targets, source = [float(t) for t in a.latency_target_ms.split(",") if t.strip()], "--latency-target-ms"
    elif method.latency_target_ms:
        targets, source = list(method.latency_target_ms), "early_exit.latency_target_ms"
    else:
        targets, source = [f * full_median for f in (0.25, 0.5, 0.75, 1.0)], "25/50/75/100% of the full model's median"
    check(all(t > 0 for t in targets), f"--latency-target-ms must be positive numbers, got {a.latency_target_ms!r}")

    predictor_out: dict = {}
    predicted = None
    options = method.predictor_options or {}
    path = a.run_dir / "early_exit" / PREDICTOR_FILE
    if not path.is_file():
        predictor_out["missing"] = f"{path} not found (a run with early_exit.predictor set writes it)"
    else:
        record = torch.load(path, map_location="cpu", weights_only=True)
        kind = a.predictor_table or options.get("table") or record.get("table", "entropy")
        bins = int(options.get("bins") or record.get("bins", 50))
        predictor = fit_predictor(record["train_entropies"], int(logits.shape[-1]), threshold, bins, kind)
        predicted = predictor.predict(entropy(logits[:, :-1].float()).double())
        predictor_out = {**predictor_report(predictor, logits, labels, metric),
                         "train_sentences": int(record["train_entropies"].shape[0])}
    fractions = latency_target_fractions(predicted if predicted is not None else actual_layers, actual_layers,
                                         cumulative, full, targets)
    if predicted is None:  # no predictor: only the unscheduled fractions mean anything
        fractions = {t: {k: v for k, v in f.items() if not k.startswith("predicted")} for t, f in fractions.items()}
    latency = {"batch": 1, "rounds": a.rounds, "sentences": n, "embeddings_ms": float(embeddings.median()),
               "per_layer_ms": per_layer.median(0).values.tolist(), "per_layer_mean_ms": per_layer.mean(0).tolist(),
               "cumulative_ms": cumulative.median(0).values.tolist(), "full_model_ms": full_median,
               "targets_ms": targets, "targets_from": source, "fraction_meeting_target": fractions}
    return latency, predictor_out


def _score(metric: str, preds: torch.Tensor, labels: torch.Tensor) -> float:
    from lowbit.algorithms.early_exit.curve import column_metric

    return float(column_metric(metric, preds.reshape(-1, 1), labels)[0])


if __name__ == "__main__":
    main()
