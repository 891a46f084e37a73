"""Collect the EdgeBERT ablation rows (those done so far) into ``results/edgebert_ablation.json``.

    python experiments/edgebert/collect_ablation.py [--table-dir logs/tables/edgebert_ablation]

Reads each row's ``summary.json`` (rows in ``conf/table/edgebert_ablation.yaml`` order, finished rows only) and
keeps the columns the README's table reads: accuracy (MNLI mismatched, QQP F1), size, sparsity, mean span and the
early-exit savings at 1 and 5 points of accuracy loss.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KEYS = re.compile(r"^(val/acc|val_mm/acc|val/f1|model/size_mb|model/compression|pruning/sparsity|"
                  r"pruning/embedding_sparsity|attention_span/mean_span|early_exit/score_no_exit|"
                  r"early_exit/(saving|delta)@[15]|distillation/loss_terms|train/global_step)$")
BUDGET = ("MiniLM-L6, 4,000 training examples per task; baseline: float fine-tune (SST-2 2 epochs at 2e-5, MNLI and QQP "
          "3 at 1e-4); later rows start from the baseline's best checkpoint (also the KD teacher), main stage 2 epochs at "
          "5e-5 (+ off-ramp stage 2 epochs at 1e-4 where early exit is on); length-grouped batches; one seed; SST-2 "
          "dev 872, MNLI 5,000 matched / 1,000 mismatched, QQP 2,000")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table-dir", type=Path, default=ROOT / "logs" / "tables" / "edgebert_ablation")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "edgebert_ablation.json")
    a = p.parse_args()
    spec = yaml.safe_load((ROOT / "conf" / "table" / "edgebert_ablation.yaml").read_text())
    names = [r["name"] for r in spec["rows"]]
    rows = {}
    for name in names:
        summary = a.table_dir / name / "summary.json"
        if summary.exists():
            rows[name] = {k: v for k, v in json.loads(summary.read_text()).items() if KEYS.match(k)}
    out = {"table": "edgebert_ablation",
           "command": "python -m lowbit.tables edgebert_ablation --rows 'sst2_*' (then 'mnli_*', 'qqp_*')",
           "budget": BUDGET, "rows_done": len(rows), "rows_total": len(names), "rows": rows}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{a.out}: {len(rows)} of {len(names)} rows")


if __name__ == "__main__":
    main()
