"""Compare two runs' dev predictions on a regression task (STS-B): where does a Pearson drop come from?

    python -m lowbit.deploy <fp32 run>/checkpoints/best.ckpt --backend fake --predictions fp32.pt
    python -m lowbit.deploy <int8 run>/checkpoints/best.ckpt --backend fake --predictions int8.pt
    python experiments/ibert/compare_regression_predictions.py fp32.pt int8.pt --out results/stsb_fp32_vs_int8.json

Per model: Pearson, Spearman, the Pearson left after the best monotone recalibration (isotonic regression of the
labels on the predictions: what a rank-preserving distortion costs is the difference), the range and spread of the
predictions (saturation of an 8-bit output would show as a clipped range and few distinct values), MSE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.isotonic import IsotonicRegression


def describe(scores: np.ndarray, labels: np.ndarray) -> dict:
    recalibrated = IsotonicRegression(out_of_bounds="clip").fit(scores, labels).predict(scores)
    return {"pearson": pearsonr(scores, labels).statistic, "spearman": spearmanr(scores, labels).statistic,
            "pearson_after_monotone_recalibration": pearsonr(recalibrated, labels).statistic,
            "mse": float(((scores - labels) ** 2).mean()), "min": float(scores.min()), "max": float(scores.max()),
            "std": float(scores.std()), "distinct_values": len(np.unique(scores))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", type=Path, help="predictions of the reference run (python -m lowbit.deploy --predictions)")
    p.add_argument("other", type=Path, help="predictions of the run compared with it")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    ref, other = (torch.load(f, weights_only=True) for f in (a.reference, a.other))
    labels = ref["labels"].numpy()
    if not np.array_equal(labels, other["labels"].numpy()):
        raise SystemExit(f"error: {a.reference} and {a.other} are not predictions of the same dev examples")
    r, o = ref["logits_fake"][:, 0].numpy(), other["logits_fake"][:, 0].numpy()
    result = {"examples": len(labels), "label_std": float(labels.std()),
              "reference": {"file": str(a.reference), **describe(r, labels)},
              "other": {"file": str(a.other), **describe(o, labels)},
              "pearson_between_the_two": pearsonr(r, o).statistic}
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
