"""``python -m lowbit.bench qat_step [--options]``: run one benchmark, write its JSON."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {"qat_step": "lowbit.bench.qat_step", "distill_step": "lowbit.bench.distill_step",
              "export_size": "lowbit.bench.export_size", "hessian": "lowbit.bench.hessian",
              "sweep_throughput": "lowbit.bench.sweep_throughput",
              "ibert_inference": "lowbit.bench.ibert_inference",
              "early_exit": "lowbit.bench.early_exit", "attention_span": "lowbit.bench.attention_span",
              "length_grouping": "lowbit.bench.length_grouping"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        sys.exit(f"usage: python -m lowbit.bench {{{','.join(BENCHMARKS)}}} [options]")
    importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
