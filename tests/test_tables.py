"""Table runner: rows in order, row references, resume, CSV/markdown/W&B outputs."""

from __future__ import annotations

import csv

import pytest

from conftest import TINY_RUN
from lowbit.errors import LowbitConfigError
from lowbit.module import CompressionModule
from lowbit.tables import TableRow, TableSpec, run_table

BASE = [o for o in TINY_RUN if not o.startswith("logger=")] + ["logger=none"]


def _spec():
    return TableSpec(
        name="tiny_table", title="tiny", metrics=["val/acc"], base_overrides=BASE,
        rows=[TableRow("fp32", ["quantizer=none"], {"acc": 93.1}),
              TableRow("w2", ["quantizer=ternary_twn", "bit_assignment.bits=2", "tags=[{row:fp32}]"],
                       {"acc": 92.8}, paper_label="TWN 2-2-8")])


def test_table_runs_rows_writes_outputs_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "table"
    results = run_table(_spec(), [], out, wandb_mode="offline")
    assert [r["row"] for r in results] == ["fp32", "w2"]
    assert results[0]["compression"] == 1.0 and results[1]["compression"] > 5
    assert results[1]["paper acc"] == 92.8 and results[1]["paper source"] == "recalled"
    rows = list(csv.DictReader((out / "tiny_table.csv").open()))
    assert [r["row"] for r in rows] == ["fp32", "w2"]
    md = (out / "tiny_table.md").read_text()
    assert "| fp32 |" in md and "recalled" in md
    assert list((out / "wandb").glob("offline-run-*/*.wandb"))
    # rerun: both rows are done, nothing trains again
    calls = []
    monkeypatch.setattr(CompressionModule, "training_step", lambda *a: calls.append(1))
    run_table(_spec(), [], out, wandb_mode="disabled")
    assert calls == []


def test_row_reference_to_a_later_row_is_an_error(tmp_path):
    spec = TableSpec(name="bad", title="bad", metrics=["val/acc"], base_overrides=BASE,
                     rows=[TableRow("a", ["tags=[{row:b}]"])])
    with pytest.raises(LowbitConfigError, match="refers to row 'b' that has not run before it"):
        run_table(spec, [], tmp_path, wandb_mode="disabled")


def test_unknown_table_name():
    with pytest.raises(LowbitConfigError, match="unknown table 'nope'"):
        TableSpec.load("nope")
