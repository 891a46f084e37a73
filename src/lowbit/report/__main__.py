"""``python -m lowbit.report [ROOT ...] [--out DIR] [--open] [--wandb [TARGET]]``: the local dashboard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lowbit.errors import LowbitConfigError
from lowbit.report import DEFAULT_OUT, DEFAULT_ROOT, build_report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lowbit.report",
                                description="Build a static dashboard (no server, no internet) of the runs, paper "
                                            "tables and Optuna sweeps under ROOT directories.")
    p.add_argument("roots", nargs="*", type=Path, metavar="ROOT",
                   help=f"directories to search for runs, tables (<name>.csv) and sweeps (optuna.db) "
                        f"(default: {DEFAULT_ROOT}/); e.g. experiments/qbert/results for committed tables")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"site directory (default: {DEFAULT_OUT})")
    p.add_argument("--open", action="store_true", help="open index.html in the web browser when built")
    p.add_argument("--wandb", nargs="?", const=None, default=argparse.SUPPRESS, metavar="TARGET",
                   help="also build a W&B Report (needs a W&B API key) of TARGET (e.g. a table's name; all when "
                        "omitted)")
    p.add_argument("--project", default="lowbit", help="W&B project of --wandb (default: lowbit)")
    p.add_argument("--entity", default=None, help="W&B entity of --wandb (default: the API key's)")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    roots = args.roots or [DEFAULT_ROOT]
    try:
        index = build_report(roots, args.out)
    except LowbitConfigError as e:
        print(f"lowbit: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"lowbit report: {index} (open it in a browser: {index.resolve().as_uri()})")
    if args.open:
        import webbrowser

        webbrowser.open(index.resolve().as_uri())
    if hasattr(args, "wandb"):
        try:
            from lowbit.report.wandb_report import create_report  # W&B's report API: imported only when asked

            url = create_report(target=args.wandb, roots=roots, project=args.project, entity=args.entity)
        except LowbitConfigError as e:
            print(f"lowbit: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"W&B report: {url}")
    return index


if __name__ == "__main__":
    main()
