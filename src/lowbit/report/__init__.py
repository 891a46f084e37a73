"""A static dashboard of lowbit's results: ``python -m lowbit.report [ROOT ...] [--out DIR] [--open]``.

``build_report(roots, out_dir)`` finds the runs, paper tables, Optuna sweeps and Hessian spectra under ``roots``
(``lowbit.report.discover``) and writes a site to ``out_dir`` (``index.html``, one page per table, sweep, run and
spectrum) that opens from disk with no server and no internet: plotly.js is copied from the plotly package into
``out_dir/assets``. ``--wandb [TARGET]`` also builds a W&B Report (``lowbit.report.wandb_report``).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_ROOT = Path("logs")
DEFAULT_OUT = DEFAULT_ROOT / "report"


def build_report(roots: list[Path], out_dir: Path) -> Path:
    """Write the site for ``roots`` into ``out_dir``; returns its ``index.html``. A root that is not a directory,
    or an ``out_dir`` that cannot be written, is a ``LowbitConfigError`` naming it. ``out_dir`` itself is not
    searched (it may lie under a root)."""
    from lowbit.errors import LowbitConfigError
    from lowbit.report.discover import discover
    from lowbit.report.site import SiteWriter

    roots = [Path(r) for r in roots]
    findings = discover(roots, exclude=[Path(out_dir)])
    try:
        return SiteWriter(findings, Path(out_dir)).write()
    except OSError as e:  # not a directory, no permission, disk full
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(out_dir) else ""
        raise LowbitConfigError(f"cannot write the report to {str(out_dir)!r}{where}: {e.strerror or e}") from None


__all__ = ["DEFAULT_OUT", "DEFAULT_ROOT", "build_report"]
