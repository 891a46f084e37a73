"""Our numbers beside the paper's: which ``paper ...`` column of a table goes with which of ours, and Δ.

A table CSV (``lowbit.tables``) has ``ours <metric>`` columns (``ours val/acc``), ``size MB``, and the paper's as
``paper <key>`` where the key is what the spec's ``paper:`` mapping calls it: the same name (``paper L2``,
``paper size MB``), the metric's short name (``paper acc``) or the task's column in the paper (``paper SST-2``,
``paper MNLI-m``). A row is compared on a metric when exactly one of those paper columns has a value in that row
(I-BERT Table 2 holds one task per row: its ``val/acc`` goes with ``paper SST-2`` in one row, ``paper MNLI-m`` in
another). A paper column named after the metric itself holds the value as a run reports it (a fraction,
``early_exit/saving@1: 0.54``): it is shown as a percentage when the table shows that metric so (``percent``);
the task columns are as the paper prints them, already in the table's units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: paper column keys that stand for one of our metrics (besides the metric's own name)
ALIASES = {
    "val/acc": ("acc", "SST-2", "MNLI-m", "MNLI", "QNLI", "QQP", "RTE"),
    "val_mm/acc": ("acc_mm", "MNLI-mm"),
    "val/f1": ("f1", "MRPC"),
    "val/pearson": ("pearson", "STS-B"),
    "val/mcc": ("mcc", "CoLA"),
}
SIZE = "size MB"
#: words of a metric name for which smaller is better (the Δ colour flips): sizes, approximation errors, losses
LOWER_IS_BETTER = ("size", "l2", "linf", "loss", "error", "latency", "_ms")


@dataclass
class Comparison:
    metric: str                  # ours, as the spec names it (val/acc), or "size MB"
    ours_column: str             # "ours val/acc" / "size MB"
    paper_columns: list[str]     # the candidate "paper ..." columns, in the table's order
    #: factor from a paper column's values to the table's units (100 for a fraction shown as a percentage)
    scale: dict[str, float] = field(default_factory=dict)

    @property
    def lower_is_better(self) -> bool:
        return any(w in self.metric.lower() for w in LOWER_IS_BETTER)


def comparisons(columns: list[str], shows_percent: Callable[[str], bool] | None = None) -> list[Comparison]:
    """One per metric of ours in the table (its paper candidates may be empty), in the table's column order.
    ``shows_percent``: whether the table shows a metric as a percentage (``TableSpec.shows_percent``; without a
    spec, a paper column named after the metric is taken to be in the table's units)."""
    paper = [c for c in columns if c.startswith("paper ") and c != "paper source"]
    out = []
    for column in columns:
        if column.startswith("ours "):
            metric = column[len("ours "):]
        elif column == SIZE:
            metric = SIZE
        else:
            continue
        names = [metric, *ALIASES.get(metric, ())]
        own_percent = metric != SIZE and shows_percent is not None and shows_percent(metric)
        out.append(Comparison(metric, column, [c for c in paper if c[len("paper "):] in names],
                              {f"paper {metric}": 100.0} if own_percent else {}))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def paper_value(row: dict[str, Any], comparison: Comparison) -> tuple[str | None, Any]:
    """(paper column, value) of the row for this metric; (None, None) unless exactly one candidate has a value."""
    given = [(c, row.get(c)) for c in comparison.paper_columns if row.get(c) is not None]
    if len(given) != 1:
        return None, None
    column, value = given[0]
    factor = comparison.scale.get(column)
    return column, (round(value * factor, 4) if factor and _is_number(value) else value)


def delta(row: dict[str, Any], comparison: Comparison) -> float | None:
    """Ours − paper, when both are numbers."""
    ours = row.get(comparison.ours_column)
    _, paper = paper_value(row, comparison)
    return float(ours) - float(paper) if _is_number(ours) and _is_number(paper) else None


def delta_class(value: float | None, comparison: Comparison) -> str:
    """CSS class of a Δ: ``delta-good`` when ours is better than the paper's, ``delta-bad`` when worse."""
    if value is None:
        return ""
    if abs(value) < 1e-12:
        return "delta-zero"
    better = value < 0 if comparison.lower_is_better else value > 0
    return "delta-good" if better else "delta-bad"
