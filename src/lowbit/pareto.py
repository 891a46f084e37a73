"""The Pareto front of (accuracy, size) points: one definition for the W&B charts, the local dashboard and the
notebooks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby

#: (accuracy: higher is better, size: lower is better); None where a row has no value
Point = tuple[float | None, float | None]


def _complete(point: Point) -> bool:
    return all(v is not None and math.isfinite(v) for v in point)


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as accurate and at most as large as ``b``, and strictly better in one of the two."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices (ascending) of the points on the Pareto front: no other point has ≥ accuracy and ≤ size with one
    of them strict. A point missing a coordinate (None, NaN) is not on the front and dominates nothing; equal
    points do not dominate each other (both are on the front or neither).

    One pass over the points by size: at one size only the most accurate points can be on the front, and they
    are iff they beat every smaller point's accuracy."""
    valid = sorted((i for i, p in enumerate(points) if _complete(p)), key=lambda i: points[i][1])
    front: list[int] = []
    best_smaller = -math.inf  # best accuracy of the points smaller than the current size
    for _, same_size in groupby(valid, key=lambda i: points[i][1]):
        same_size = list(same_size)
        best = max(points[i][0] for i in same_size)
        if best > best_smaller:
            front += [i for i in same_size if points[i][0] == best]
        best_smaller = max(best_smaller, best)
    return sorted(front)
