"""What an offline W&B run wrote, read from its ``.wandb`` file (no W&B server, no ``wandb sync``).

Records are ``wandb_internal`` protobufs in W&B's LevelDB-style blocks, read by ``lowbit.report.curves``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def records(path: Path) -> list:
    """Every ``wandb_internal_pb2.Record`` of ``path``, in order (the block format is read by the dashboard's
    ``lowbit.report.curves.wandb_records``: one reader of W&B's files)."""
    from wandb.proto import wandb_internal_pb2 as pb

    from lowbit.report.curves import wandb_records

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"[:len(data)], f"{path} is not a W&B run log"
    out = []
    for payload in wandb_records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        out.append(record)
    return out


def finished_records(path: Path, timeout_s: float = 60.0) -> list:
    """``records(path)`` once the run's ``exit`` record is there: W&B's service process writes the file and may
    still be flushing it when ``run.finish()`` returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def run_record(path: Path):
    """The run record (group, job type, name, ...) of a finished offline ``.wandb`` file."""
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"no run record in {path}")


@dataclass
class RunLog:
    """An offline run's run record, its config (the last value of each key), and the values of its history rows."""

    run: Any
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def logged(self, key: str) -> list[Any]:
        """Every value logged under ``key`` (in history order)."""
        return [row[key] for row in self.history if key in row]


def _put(into: dict[str, Any], item) -> None:
    """An item's decoded value at its key; a nested key (a logged dict, ``_wandb.visualize``) as nested dicts."""
    keys = [item.key] if item.key else list(item.nested_key)
    for key in keys[:-1]:
        into = into.setdefault(key, {})
    into[keys[-1]] = json.loads(item.value_json)


def run_log(path: Path) -> RunLog:
    """The run record, config and history of an offline ``.wandb`` file (JSON values decoded)."""
    log = RunLog(run=run_record(path))
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                _put(log.config, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item)
            log.history.append(row)
    return log


def logged_table(run_file: Path, value: dict[str, Any]) -> dict[str, Any]:
    """The columns and rows of a logged ``wandb.Table`` (or a chart's table): ``value`` is its history entry."""
    assert value.get("_type") == "table-file", value
    return json.loads((Path(run_file).parent / "files" / value["path"]).read_text())


def offline_run_files(directory: Path) -> list[Path]:
    """The ``.wandb`` file of each offline run under ``directory`` (its ``wandb/offline-run-*`` folders)."""
    return sorted(directory.glob("**/offline-run-*/*.wandb"))
