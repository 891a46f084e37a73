"""Computed I-BERT tables (``python -m lowbit.tables ibert_table1``)."""

from __future__ import annotations

from lowbit.algorithms.ibert import integer as I


def table1_rows() -> dict[str, dict[str, float]]:
    """I-BERT Table 1: L2 / L∞ distance of each GELU approximation from GELU on [-4, 4], and i-exp's max error."""
    errors = I.gelu_approximation_errors()
    rows = {name: {"L2": e["L2"], "Linf": e["Linf"]} for name, e in errors.items()}
    rows["i_exp"] = {"Linf": I.i_exp_max_error()}
    return rows
