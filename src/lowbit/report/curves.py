"""Training curves of a run, from what its logger wrote: Lightning's CSV logger (``logger=csv``:
``<run>/csv/version_*/metrics.csv``) and W&B offline or online run files (``logger=wandb``, the default:
``<run>/wandb/*run-*/run-<id>.wandb``, read without the W&B service or network).

A ``.wandb`` file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version), then LevelDB-style 32 KiB
blocks of records ``[crc32 (4), length (2, little-endian), type (1), payload]``; a record's payload is split over
blocks as FULL (1) or FIRST (2), MIDDLE (3)..., LAST (4). Each payload is a ``wandb_internal`` ``Record`` protobuf;
the ``history`` ones hold one logged step (``item``: key or nested key, JSON value).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import struct
from collections.abc import Iterator
from pathlib import Path

#: the step axis, in order of preference (Lightning's global step, the CSV logger's step, W&B's own counter)
STEP_KEYS = ("trainer/global_step", "step", "_step")
#: bookkeeping columns that are not curves
NOT_CURVES = {"epoch", "_timestamp", "_runtime", *STEP_KEYS}

Curves = dict[str, list[tuple[float, float]]]  # metric -> [(step, value)] in logging order
log = logging.getLogger(__name__)

_HEADER = 7
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[bytes]:
    """The record payloads of a ``.wandb`` file, in order (a torn tail of a live run is dropped)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        return
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # a record still being written (a live run): dropped
            return
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""


def wandb_history(path: Path) -> list[dict]:
    """The logged steps (``run.log`` calls) of a ``.wandb`` file, as dicts."""
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except ImportError:  # wandb not installed: no curves from its files
        return []
    steps = []
    for payload in wandb_records(path):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception as e:  # noqa: BLE001 - a record of a newer W&B, or torn: skip it, keep the rest
            log.debug("%s: skipping a record W&B's protobuf does not parse (%s)", path, e)
            continue
        if record.WhichOneof("record_type") != "history":
            continue
        step = {}
        for item in record.history.item:
            key = "/".join(item.nested_key) if item.nested_key else item.key
            try:
                step[key] = json.loads(item.value_json)
            except ValueError:
                continue
        steps.append(step)
    return steps


def csv_history(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def to_curves(steps: list[dict]) -> Curves:
    curves: Curves = {}
    for i, step in enumerate(steps):
        x = next((_number(step[k]) for k in STEP_KEYS if k in step and _number(step[k]) is not None), float(i))
        for key, value in step.items():
            y = _number(value)
            if key not in NOT_CURVES and y is not None:
                curves.setdefault(key, []).append((x, y))
    return curves


def history_files(run_dir: Path) -> list[Path]:
    """A run's logger files: CSV logger metrics and W&B run files (one per resumption, in time order)."""
    csvs = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    wandbs = sorted(run_dir.glob("wandb/*run-*/run-*.wandb"))
    return [*csvs, *wandbs]


def training_curves(run_dir: Path) -> tuple[Curves, list[Path]]:
    """(metric -> [(step, value)], the files read) of one run; empty when its logger kept no history
    (``logger=none``, or a sweep trial scored from a cache)."""
    files = history_files(run_dir)
    curves: Curves = {}
    for path in files:
        steps = csv_history(path) if path.suffix == ".csv" else wandb_history(path)
        for key, points in to_curves(steps).items():
            curves.setdefault(key, []).extend(points)
    return curves, files
