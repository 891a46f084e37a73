"""The W&B Report of tables and sweeps: one line without an API key; the report's sections and panels, built
offline (saving it needs W&B)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lowbit.errors import LowbitConfigError
from lowbit.report.wandb_report import NO_KEY, build_report, create_report, report_targets
from lowbit.wandb_charts import SparsityCurve, bar_key, groups_key, pareto_key, sweep_pareto_key, sweep_trials_key

TABLE, STUDY = "qbert_groups", "tiny_study"
PARAMS = ["bit_assignment.bits", "optim.lr"]


def test_without_an_api_key_the_report_is_one_line_saying_how_to_sync(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc entry for api.wandb.ai
    with pytest.raises(LowbitConfigError) as e:
        create_report(TABLE, [tmp_path / "not there"], "lowbit", None)  # the key is checked before anything else
    assert str(e.value) == NO_KEY and "\n" not in NO_KEY
    assert "API key" in NO_KEY and "wandb sync" in NO_KEY


def _logs(root: Path) -> None:
    """A table's CSV with two row runs (group-wise at 1 and 12 ranges, one pruned) and a two-objective sweep."""
    table_dir = root / "tables" / TABLE
    table_dir.mkdir(parents=True)
    columns = ["row", "paper_row", "ours val/acc", "size MB", "compression", "paper acc", "paper source"]
    with (table_dir / f"{TABLE}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerow(["w4_g1", "1 group", 85.0, 12.0, 7.5, 85.67, "recalled"])
        writer.writerow(["w4_g12", "12 groups", 88.0, 12.5, 7.2, "", "recalled"])
    for row, n_groups, pruning in (("w4_g1", 1, "none"), ("w4_g12", 12, "magnitude")):
        (table_dir / row / ".hydra").mkdir(parents=True)
        (table_dir / row / "summary.json").write_text(json.dumps({"val/acc": 0.85, "model/size_mb": 12.0,
                                                                  "pruning/option": pruning}))
        (table_dir / row / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
            {"data": {"task": "sst2"}, "quantizer": {"n_groups": n_groups}, "bit_assignment": {"bits": 4}}))

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    sweep_dir = root / "sweeps" / STUDY
    sweep_dir.mkdir(parents=True)
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{sweep_dir / 'optuna.db'}",
                                directions=["maximize", "minimize"])
    distributions = {"bit_assignment.bits": CategoricalDistribution([2, 4]), "optim.lr": FloatDistribution(1e-5, 1e-3)}
    for bits, values in ((2, [0.8, 1e6]), (4, [0.85, 2e6])):
        study.add_trial(optuna.create_trial(params={"bit_assignment.bits": bits, "optim.lr": 1e-4},
                                            distributions=distributions, values=values))
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({
        "objectives": ["val/acc", "model/size_bits"],
        "hydra": {"sweeper": {"study_name": STUDY, "params": {"bit_assignment.bits": "choice(2, 4)",
                                                              "optim.lr": "interval(1e-5, 1e-3)"}}}}))


def _panel_grid(report, heading: str):
    import wandb_workspaces.reports.v2 as wr

    at = next(i for i, b in enumerate(report.blocks) if isinstance(b, wr.H2) and b.text == heading)
    grid = report.blocks[at + 2]
    assert isinstance(grid, wr.PanelGrid)
    return grid


def _group_filter(grid) -> str:
    from wandb_workspaces import expr

    (runset,) = grid.runsets
    parsed = expr.expr_to_filters(runset.filters)
    assert (parsed.op, parsed.key.section, parsed.key.name) == ("=", "run", "group")
    return parsed.value


def test_the_report_has_a_section_per_table_and_sweep_with_their_panels(tmp_path):
    import wandb_workspaces.reports.v2 as wr

    _logs(tmp_path)
    targets = report_targets(None, [tmp_path])
    report = build_report(targets, "lowbit", "my-team")
    assert (report.project, report.entity) == ("lowbit", "my-team")
    assert [b.text for b in report.blocks if isinstance(b, wr.H2)] == [f"Table {TABLE}", f"Sweep {STUDY}"]

    table = _panel_grid(report, f"Table {TABLE}")
    assert _group_filter(table) == TABLE  # the rows' runs and the table run
    tables = [p.table_name for p in table.panels if isinstance(p, wr.WeavePanelSummaryTable)]
    assert tables == [TABLE, pareto_key(TABLE, "val/acc")]  # paper and Δ columns; the Pareto figure
    charts = {p.query["summaryTable"]["tableKey"]: (p.chart_name, p.chart_fields) for p in table.panels
              if isinstance(p, wr.CustomChart)}
    assert charts == {
        bar_key(TABLE, "val/acc") + "_table": ("wandb/bar/v0", {"label": "bar", "value": "val/acc"}),
        groups_key(TABLE, "val/acc") + "_table": ("wandb/line/v0", {"x": "groups per matrix", "y": "val/acc",
                                                                    "stroke": "weight bits"}),
        SparsityCurve.KEY + "_table": ("wandb/lineseries/v0", {"step": "step", "lineKey": "lineKey",
                                                               "lineVal": "lineVal"})}
    (scatter,) = [p for p in table.panels if isinstance(p, wr.ScatterPlot)]
    assert (scatter.x, scatter.y) == (wr.SummaryMetric("model/size_mb"), wr.SummaryMetric("val/acc"))
    assert [p.y for p in table.panels if isinstance(p, wr.LinePlot)] == [["val/acc"], ["train/loss"]]

    sweep = _panel_grid(report, f"Sweep {STUDY}")
    assert _group_filter(sweep) == STUDY  # the trials' runs and the study's run
    assert [p.table_name for p in sweep.panels if isinstance(p, wr.WeavePanelSummaryTable)] == [
        sweep_trials_key(STUDY), sweep_pareto_key(STUDY, "val/acc", "model/size_bits")]
    (scatter,) = [p for p in sweep.panels if isinstance(p, wr.ScatterPlot)]
    assert (scatter.x, scatter.y) == (wr.SummaryMetric("model/size_bits"), wr.SummaryMetric("val/acc"))
    (parallel,) = [p for p in sweep.panels if isinstance(p, wr.ParallelCoordinatesPlot)]
    assert [c.metric for c in parallel.columns] == [wr.Config(f"sweep.params.{p}") for p in PARAMS] + [
        wr.SummaryMetric("val/acc"), wr.SummaryMetric("model/size_bits")]


def test_targets_by_name(tmp_path):
    _logs(tmp_path)
    assert [t.study_name for t in report_targets(STUDY, [tmp_path])] == [STUDY]
    (table,) = report_targets(TABLE, [tmp_path])
    assert set(table.row_runs) == {"w4_g1", "w4_g12"}
    # a conf table with no results here: its runs may be in W&B already
    (elsewhere,) = report_targets("qbert_sst2", [tmp_path])
    assert elsewhere.spec.name == "qbert_sst2" and elsewhere.rows == []
    with pytest.raises(LowbitConfigError, match=rf"no table or sweep named 'nope' under .*found: \['{TABLE}', '{STUDY}'\]"):
        report_targets("nope", [tmp_path])
