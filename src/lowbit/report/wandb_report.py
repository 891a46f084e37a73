"""A W&B Report of paper tables and Optuna sweeps (``python -m lowbit.report --wandb [TARGET]``).

``create_report`` finds the targets under the report's roots (``lowbit.report.discover``: tables, sweeps), builds
the report (``build_report``, offline) and saves it to W&B, which needs an API key. Each target gets a section
whose panels read the runs of its W&B group (a table's name: its rows' runs and the table run; a sweep's study:
its trials' runs and the study's run) and the charts ``lowbit.wandb_charts`` logged there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowbit.errors import LowbitConfigError

NO_KEY = ("--wandb needs a W&B API key (WANDB_API_KEY or `wandb login`); the offline runs can be synced with "
          "`wandb sync <dir>`")
#: what every row run and trial run logs (``lowbit.module``, ``lowbit.size``)
STEP, SIZE_MB, TRAIN_LOSS = "trainer/global_step", "model/size_mb", "train/loss"


def report_targets(target: str | None, roots: list[Path]) -> list[Any]:
    """The tables (``discover.TableResult``) and sweeps (``discover.Sweep``) the report covers: those named
    ``target`` (a table's name or a study's name), or every one found under ``roots`` when it is None. A table of
    ``conf/table`` with no results under the roots is still a target (its runs may be in W&B from elsewhere)."""
    from lowbit.report.discover import TableResult, discover, load_spec

    found = discover([Path(r) for r in roots])
    targets = [*found.tables, *found.sweeps]
    if target is not None:
        targets = [t for t in targets if _name(t) == target]
        spec = load_spec(target) if not targets else None
        if spec is not None:
            targets = [TableResult(target, Path(), [], [], spec)]
    if not targets:
        known = sorted({_name(t) for t in [*found.tables, *found.sweeps]})
        where = ", ".join(str(r) for r in roots)
        raise LowbitConfigError(f"no table or sweep named {target!r} under {where}; found: {known}" if target
                                else f"no table or sweep under {where} to report")
    return targets


def _name(target: Any) -> str:
    return getattr(target, "study_name", None) or target.name


def _runset(wr, name: str, project: str, entity: str):
    return wr.Runset(project=project, entity=entity, name=name, filters=f"Group = {name!r}")


def _custom_chart(wr, key: str, spec_id: str, fields: dict[str, str], title: str):
    """A panel of a chart ``wandb.plot`` logged under ``key`` (W&B keeps its data as ``<key>_table``)."""
    return wr.CustomChart(query={"summaryTable": {"tableKey": f"{key}_table"}}, chart_name=spec_id,
                          chart_fields=fields, chart_strings={"title": title})


def table_panels(wr, table: Any) -> list:
    """Panels of a table: the logged table (paper and Δ columns), ours vs paper bars, accuracy vs size over the
    row runs with the Pareto front, accuracy vs group count, the rows' method charts and training curves."""
    from lowbit.wandb_charts import SIZE_COLUMN, SparsityCurve, bar_key, chart_field, groups_key, pareto_key

    metrics = list(table.spec.metrics) if table.spec is not None else [
        c[len("ours "):] for c in table.columns if c.startswith("ours ")]
    panels: list = [wr.WeavePanelSummaryTable(table_name=table.name)]
    panels += [_custom_chart(wr, bar_key(table.name, m), "wandb/bar/v0", {"label": "bar", "value": chart_field(m)},
                             f"{m} per row: ours vs paper") for m in metrics]
    if not metrics:
        return panels
    first = metrics[0]
    trained = table.spec is not None and table.spec.compute is None  # trained rows report their size
    if SIZE_COLUMN in table.columns or trained:
        panels += [wr.ScatterPlot(title=f"{first} vs size (row runs)", x=wr.SummaryMetric(SIZE_MB),
                                  y=wr.SummaryMetric(first)),
                   wr.WeavePanelSummaryTable(table_name=pareto_key(table.name, first))]
    runs = table.row_runs.values()
    if len({r.config_value("quantizer.n_groups") for r in runs} - {None}) > 1:
        panels.append(_custom_chart(wr, groups_key(table.name, first), "wandb/line/v0",
                                    {"x": "groups per matrix", "y": chart_field(first), "stroke": "weight bits"},
                                    f"{first} vs group count"))
    if any(r.summary.get("pruning/option") not in (None, "none") for r in runs):
        panels.append(_custom_chart(wr, SparsityCurve.KEY, "wandb/lineseries/v0",
                                    {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
                                    "sparsity per layer"))
    if any(r.layer_bits is not None for r in runs):
        panels.append(_custom_chart(wr, "bit_assignment/bits per layer", "wandb/bar/v0",
                                    {"label": "layer", "value": "bits"}, "weight bits per layer"))
    panels += [wr.LinePlot(title=f"{first} while training", x=STEP, y=[first]),
               wr.LinePlot(title="training loss", x=STEP, y=[TRAIN_LOSS])]
    return panels


def sweep_params(sweep: Any) -> list[str]:
    """The searched parameters of a sweep (``hydra.sweeper.params`` of its ``multirun.yaml``)."""
    import yaml

    try:
        cfg = yaml.safe_load((Path(sweep.directory) / "multirun.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    params = ((cfg.get("hydra") or {}).get("sweeper") or {}).get("params") if isinstance(cfg, dict) else None
    return [str(k).lstrip("+~") for k in params] if isinstance(params, dict) else []


def sweep_panels(wr, sweep: Any) -> list:
    """Panels of a sweep: the trials table, objective vs objective over the trial runs with the Pareto front,
    parameters against objectives (the trials' ``sweep.params`` config), the first objective while training."""
    from lowbit.wandb_charts import sweep_pareto_key, sweep_trials_key

    objectives, study = list(sweep.objectives), sweep.study_name
    panels: list = [wr.WeavePanelSummaryTable(table_name=sweep_trials_key(study))]
    if len(objectives) == 2:
        y, x = objectives
        panels += [wr.ScatterPlot(title=f"{y} vs {x} (trial runs)", x=wr.SummaryMetric(x), y=wr.SummaryMetric(y)),
                   wr.WeavePanelSummaryTable(table_name=sweep_pareto_key(study, y, x))]
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(f"sweep.params.{p}")) for p in sweep_params(sweep)]
    columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(o)) for o in objectives]
    panels.append(wr.ParallelCoordinatesPlot(title="parameters and objectives", columns=columns))
    if objectives:
        panels.append(wr.LinePlot(title=f"{objectives[0]} while training", x=STEP, y=[objectives[0]]))
    return panels


def build_report(targets: list[Any], project: str, entity: str, title: str | None = None):
    """The ``wr.Report`` of ``targets`` (``report_targets``), one section per target, not saved: built offline."""
    import wandb_workspaces.reports.v2 as wr

    blocks: list = []
    for target in targets:
        name = _name(target)
        if hasattr(target, "study_name"):
            blocks += [wr.H2(f"Sweep {name}"),
                       wr.P(f"Optuna study {name}: objectives {', '.join(target.objectives)}; its trials' runs and "
                            f"the study's run share the W&B group {name!r}."),
                       wr.PanelGrid(runsets=[_runset(wr, name, project, entity)], panels=sweep_panels(wr, target))]
        else:
            about = target.spec.title if target.spec is not None else name
            blocks += [wr.H2(f"Table {name}"),
                       wr.P(f"{about}. Its rows' runs (job type = row) and the table run share the W&B group "
                            f"{name!r}; Δ = ours − paper."),
                       wr.PanelGrid(runsets=[_runset(wr, name, project, entity)], panels=table_panels(wr, target))]
    title = title or ("lowbit: " + ", ".join(_name(t) for t in targets))
    return wr.Report(project=project, entity=entity, title=title[:128], blocks=blocks,
                     description="Paper tables and sweeps of lowbit (python -m lowbit.report --wandb)")


def create_report(target: str | None, roots: list[Path], project: str, entity: str | None) -> str:
    """Build and save the W&B Report of ``target`` (all tables and sweeps under ``roots`` when None); its URL.
    Without a W&B API key: ``LowbitConfigError`` (one line, how to sync the offline runs instead)."""
    from lowbit.tracking import wandb_api_key_configured

    if not wandb_api_key_configured():
        raise LowbitConfigError(NO_KEY)
    targets = report_targets(target, roots)
    if entity is None:
        import wandb

        entity = wandb.Api().default_entity
    report = build_report(targets, project, entity).save()
    return report.url
