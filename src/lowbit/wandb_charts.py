"""W&B charts of paper tables, method internals and sweeps, and the W&B identity of a sweep's runs.

Pure functions turn results into W&B objects: ``with_deltas`` (a table's Δ = ours − paper columns),
``table_charts`` (per table: ours vs paper bars, accuracy vs size with the Pareto front, accuracy vs group count),
``hessian_charts`` / ``layer_bits_charts`` (Q-BERT: Hessian and bits per layer), ``sweep_charts`` (a study's trials
and their Pareto front). Thin loggers send them: ``tables.log_wandb_table``, the Lightning callbacks methods return
(``ChartsAtTrainStart``, ``SparsityCurve``: they log to the run's ``WandbLogger`` s only, so CSV and no-logger runs
are unchanged), and the sweeper (``sweep_run_overrides`` for its trials, ``log_sweep_run`` when it reports).

Charts use W&B's built-in Vega specs (``wandb.plot`` scatter / bar / line / line series: drawn from the table
logged with them, offline runs included once synced; W&B cannot take a new Vega spec offline), and Plotly figures
(``wandb.Plotly``, stored with the run) where one chart needs two marks: rows and their Pareto front.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytorch_lightning import Callback

from lowbit.pareto import Point, dominates, pareto_front  # noqa: F401 - dominates, Point: re-exported

if TYPE_CHECKING:
    from lowbit.tables import TableSpec

#: the table column of our model's size (``tables._table_row``) and the paper's column of its size
SIZE_COLUMN = "size MB"


def chart_field(name: str) -> str:
    """A chart column name Vega reads as one field (a dot would be a nested field)."""
    return name.replace(".", "_")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def paper_value(spec: TableSpec, row: Mapping[str, Any], metric: str) -> float | None:
    """The paper's value of ``metric`` in ``row``, in the table's units, by the dashboard's pairing rule
    (``lowbit.report.compare``: the metric's own name — a fraction, shown as a percentage when the table shows the
    metric so —, its short name or the paper's task column; exactly one of them given in the row)."""
    from lowbit.report.compare import Comparison, comparisons
    from lowbit.report.compare import paper_value as paired

    column = SIZE_COLUMN if metric == SIZE_COLUMN else f"ours {metric}"
    found = [c for c in comparisons([column, *row], spec.shows_percent) if c.ours_column == column]
    comparison: Comparison | None = found[0] if found else None
    return None if comparison is None else _number(paired(dict(row), comparison)[1])


def _delta(ours: Any, paper: float | None) -> float | None:
    ours = _number(ours)
    return None if ours is None or paper is None else float(f"{ours - paper:.4g}")


def with_deltas(spec: TableSpec, results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The result rows with a ``Δ <metric>`` column (ours − paper, in the table's units) for each metric the paper
    reports on some row, and ``Δ size MB`` where the paper gives a size; None where either side is missing. The
    pairing is the dashboard's (``paper_value``), so W&B and ``python -m lowbit.report`` show the same Δ."""
    columns: dict[str, Callable[[Mapping[str, Any]], float | None]] = {}
    for metric in [*spec.metrics, SIZE_COLUMN]:
        ours = SIZE_COLUMN if metric == SIZE_COLUMN else f"ours {metric}"
        if any(paper_value(spec, r, metric) is not None for r in results):
            columns[f"Δ {metric}"] = lambda r, m=metric, o=ours: _delta(r.get(o), paper_value(spec, r, m))
    return [{**r, **{name: delta(r) for name, delta in columns.items()}} for r in results]


@dataclass(frozen=True)
class RowSetting:
    """What the charts read from a row's config (None where the row does not set it)."""

    task: str | None = None
    n_groups: int | None = None  # ranges per matrix of group-wise quantization
    bits: int | None = None  # encoder weight bits (``bit_assignment.bits``)


def _select(cfg, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)


def row_settings(out_dir: Path, rows: Sequence[str]) -> dict[str, RowSetting]:
    """Each row's ``RowSetting``, from the config it ran with (``<out_dir>/<row>/.hydra/config.yaml``); rows
    without one (a computed table) are left out."""
    from omegaconf import OmegaConf

    settings = {}
    for row in rows:
        path = Path(out_dir) / row / ".hydra" / "config.yaml"
        if not path.is_file():
            continue
        cfg = OmegaConf.load(path)
        n_groups = _select(cfg, "quantizer.n_groups")
        per_head, heads = _select(cfg, "quantizer.groups_per_head"), _select(cfg, "quantizer.num_attention_heads")
        if n_groups is None and per_head is not None and heads is not None:
            n_groups = per_head * heads
        settings[row] = RowSetting(task=_select(cfg, "data.task"), n_groups=n_groups,
                                   bits=_select(cfg, "bit_assignment.bits"))
    return settings


def bar_key(table: str, metric: str) -> str:
    return f"{table}/{metric} per row"


def scatter_key(table: str, metric: str) -> str:
    return f"{table}/{metric} vs size"


def pareto_key(table: str, metric: str) -> str:
    return f"{table}/{metric} vs size, Pareto front"


def groups_key(table: str, metric: str) -> str:
    return f"{table}/{metric} vs group count"


def sweep_trials_key(study: str) -> str:
    return f"{study}/trials"


def sweep_scatter_key(study: str, y: str, x: str) -> str:
    return f"{study}/{y} vs {x}"


def sweep_pareto_key(study: str, y: str, x: str) -> str:
    return f"{study}/{y} vs {x}, Pareto front"


def _bars(spec: TableSpec, results: Sequence[Mapping[str, Any]], metric: str):
    """Ours and the paper's value of ``metric`` per row, side by side (None when no row has ours)."""
    import wandb

    data = []
    for r in results:
        ours, paper = _number(r.get(f"ours {metric}")), paper_value(spec, r, metric)
        if ours is not None:
            data.append([r["row"], "ours", f"{r['row']} (ours)", ours])
        if paper is not None:
            data.append([r["row"], "paper", f"{r['row']} (paper)", paper])
    if not any(d[1] == "ours" for d in data):
        return None
    table = wandb.Table(columns=["row", "source", "bar", chart_field(metric)], data=data)
    versus = ", ours vs paper" if any(d[1] == "paper" for d in data) else " per row (no paper value)"
    return wandb.plot.bar(table, "bar", chart_field(metric), title=f"{spec.title}: {metric}{versus}")


def pareto_figure(series: Mapping[str | None, Sequence[tuple[str, float, float, bool]]], x_title: str,
                  y_title: str, title: str):
    """A Plotly figure of (name, x, y, on the Pareto front) points: per series (a task; None: one unnamed series)
    every point, and the front's points joined in order of x."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, points in series.items():
        front = sorted((p for p in points if p[3]), key=lambda p: p[1])
        suffix = f" ({name})" if name else ""
        for label, shown, mode in ((f"all{suffix}", points, "markers"), (f"Pareto front{suffix}", front, "lines+markers")):
            fig.add_trace(go.Scatter(x=[p[1] for p in shown], y=[p[2] for p in shown], text=[p[0] for p in shown],
                                     mode=mode, name=label, hovertemplate="%{text}: (%{x}, %{y})"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title)
    return fig


def _size_charts(spec: TableSpec, results: Sequence[Mapping[str, Any]], settings: Mapping[str, RowSetting],
                 metric: str) -> dict[str, Any]:
    """Accuracy vs size: a scatter of the rows (its table marks the front) and the Pareto front per task."""
    import wandb

    rows = [(r["row"], settings.get(r["row"], RowSetting()).task, _number(r.get(SIZE_COLUMN)),
             _number(r.get(f"ours {metric}"))) for r in results]
    rows = [r for r in rows if r[2] is not None and r[3] is not None]
    if len(rows) < 2:
        return {}
    by_task: dict[str | None, list[tuple[str, float, float]]] = {}
    for name, task, size, value in rows:
        by_task.setdefault(task, []).append((name, size, value))
    series = {}
    for task, points in by_task.items():
        front = set(pareto_front([(value, size) for _, size, value in points]))
        series[task] = [(*p, i in front) for i, p in enumerate(points)]
    on_front = {p[0] for points in series.values() for p in points if p[3]}
    table = wandb.Table(columns=["row", "task", SIZE_COLUMN, chart_field(metric), "on Pareto front"],
                        data=[[name, task, size, value, name in on_front] for name, task, size, value in rows])
    tasks = " per task" if len(by_task) > 1 else ""
    figure = pareto_figure(series, SIZE_COLUMN, metric, f"{spec.title}: {metric} vs size, Pareto front{tasks} "
                                                         "(no other row as accurate and smaller)")
    return {scatter_key(spec.name, metric): wandb.plot.scatter(table, SIZE_COLUMN, chart_field(metric),
                                                               title=f"{spec.title}: {metric} vs size"),
            pareto_key(spec.name, metric): wandb.Plotly(figure)}


def _group_count_chart(spec: TableSpec, results: Sequence[Mapping[str, Any]], settings: Mapping[str, RowSetting],
                       metric: str):
    """``metric`` vs ranges per matrix, one line per weight bit-width (None unless rows differ in group count)."""
    import wandb

    data = []
    for r in results:
        setting, value = settings.get(r["row"], RowSetting()), _number(r.get(f"ours {metric}"))
        if setting.n_groups is not None and value is not None:
            data.append([setting.n_groups, value, f"{setting.bits}-bit", r["row"]])
    data.sort(key=lambda d: (d[2], d[0]))  # each line in order of group count
    if len({d[0] for d in data}) < 2:
        return None
    table = wandb.Table(columns=["groups per matrix", chart_field(metric), "weight bits", "row"], data=data)
    return wandb.plot.line(table, "groups per matrix", chart_field(metric), stroke="weight bits",
                           title=f"{spec.title}: {metric} vs group count")


def table_charts(spec: TableSpec, results: Sequence[Mapping[str, Any]],
                 settings: Mapping[str, RowSetting] | None = None) -> dict[str, Any]:
    """The charts of a table's results, by W&B key (under the table's name):

    - ``bar_key``: per metric, ours and the paper's value (where it has one) per row;
    - ``scatter_key`` and ``pareto_key``: the first metric vs ``size MB`` when rows have a size (a scatter of the
      rows, and a Plotly figure of the rows with their Pareto front; per task when the rows' configs name several);
    - ``groups_key``: the first metric vs ranges per matrix, a line per bit-width, when rows' group counts differ.

    ``settings``: each row's ``RowSetting`` (``row_settings``); without them, no group-count chart and one task."""
    settings = settings or {}
    charts: dict[str, Any] = {}
    for metric in spec.metrics:
        bars = _bars(spec, results, metric)
        if bars is not None:
            charts[bar_key(spec.name, metric)] = bars
    if not spec.metrics:
        return charts
    charts.update(_size_charts(spec, results, settings, spec.metrics[0]))
    line = _group_count_chart(spec, results, settings, spec.metrics[0])
    if line is not None:
        charts[groups_key(spec.name, spec.metrics[0])] = line
    return charts


# -- methods ------------------------------------------------------------------------------------
#: Hessian quantities of a ``lowbit.hessian`` block, by the key of their bar chart
HESSIAN_BARS = {
    "hessian/layer_top_eigenvalue": ("mean", "top Hessian eigenvalue (mean over batches) per layer"),
    "hessian/layer_sensitivity": ("sensitivity", "Q-BERT sensitivity (mean + std of the top eigenvalue) per layer"),
    "hessian/layer_summed_eigenvalue": ("summed", "top eigenvalue of the data-summed Hessian per layer"),
}


def hessian_charts(blocks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Bars per encoder layer of a ``lowbit.hessian`` result's ``blocks`` (the ``layer`` blocks; every block if
    there are none): top eigenvalue, Q-BERT's sensitivity and, when computed, the data-summed eigenvalue."""
    import wandb

    chosen = [(name, b) for name, b in blocks.items() if b.get("kind") == "layer"] or list(blocks.items())
    quantities = [q for q, _ in HESSIAN_BARS.values()]
    table = wandb.Table(columns=["block", *quantities], data=[[name, *(b.get(q) for q in quantities)]
                                                              for name, b in chosen])
    return {key: wandb.plot.bar(table, "block", quantity, title=title) for key, (quantity, title) in HESSIAN_BARS.items()
            if any(_number(b.get(quantity)) is not None for _, b in chosen)}


def layer_bits_charts(layer_bits: Sequence[int | None], sensitivity: Sequence[float] | None = None,
                      metric: str = "sensitivity", hessian_file: str | Path | None = None) -> dict[str, Any]:
    """Bars per encoder layer of a layer-wise bit assignment: its bits (32 = left float) and, for a Hessian-ranked
    one, the sensitivity it ranked the layers by (``metric``) and the Hessian file's per-layer charts."""
    import wandb

    bits = [32 if b is None else b for b in layer_bits]
    columns, data = ["layer", "bits"], [[f"layer {i}", b] for i, b in enumerate(bits)]
    if sensitivity:
        columns.append(metric)
        data = [d + [s] for d, s in zip(data, sensitivity)]
    table = wandb.Table(columns=columns, data=data)
    charts = {"bit_assignment/bits per layer": wandb.plot.bar(table, "layer", "bits", title="weight bits per layer")}
    if sensitivity:
        charts[f"bit_assignment/{metric} per layer"] = wandb.plot.bar(
            table, "layer", metric, title=f"Hessian {metric} per layer (more bits to more sensitive layers)")
    if hessian_file is not None and Path(hessian_file).is_file():
        charts.update(hessian_charts(json.loads(Path(hessian_file).read_text()).get("blocks", {})))
    return charts


def wandb_loggers(trainer) -> list:
    """The trainer's W&B loggers (none off rank zero: one process logs the charts)."""
    from pytorch_lightning.loggers import WandbLogger

    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)] if trainer.is_global_zero else []


class ChartsAtTrainStart(Callback):
    """Logs ``make_charts()`` to the run's W&B loggers when the main training stage starts (nothing without one)."""

    def __init__(self, make_charts: Callable[[], dict[str, Any]]):
        self.make_charts = make_charts

    def on_train_start(self, trainer, pl_module) -> None:
        loggers = wandb_loggers(trainer)
        if loggers:
            charts = self.make_charts()
            for logger in loggers:
                logger.experiment.log({**charts, "trainer/global_step": trainer.global_step})


class SparsityCurve(Callback):
    """Records the pruning masks' sparsity per encoder layer and in total during the main stage (about
    ``points`` steps) and logs it to the run's W&B loggers as one line chart, ``pruning/sparsity by layer``, when
    training ends. Nothing is recorded without a W&B logger; a resumed run's chart starts at the resume.

    The pruning callbacks are SparsityCurves: they call ``on_train_batch_start`` after updating the masks."""

    KEY = "pruning/sparsity by layer"

    def __init__(self, masks: Callable[[], Mapping[str, Any]], points: int = 100):
        #: module name -> its pruning mask (``.mask``: the keep tensor), read when training starts (after prepare)
        self.masks, self.points = masks, points
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {}
        self._series: dict[str, list[Any]] = {}  # series name -> the masks it sums
        self._every = 1

    def on_train_start(self, trainer, pl_module) -> None:
        from lowbit.roles import ENCODER_LINEAR_ROLES, find_targets

        self.steps, self.values, self._series = [], {}, {}
        masks = dict(self.masks())
        if not masks or not wandb_loggers(trainer):
            return
        layer_of = {t.name: t.layer for t in find_targets(pl_module.model, *ENCODER_LINEAR_ROLES)}
        for name in sorted(masks, key=lambda n: (layer_of.get(n) is None, layer_of.get(n) or 0)):
            self._series.setdefault(f"layer {layer_of.get(name)}", []).append(masks[name])
        self._series["encoder total"] = list(masks.values())
        self._every = max(1, int(trainer.estimated_stepping_batches) // self.points)

    def _record(self, step: int) -> None:
        if self.steps and self.steps[-1] == step:
            return
        self.steps.append(step)
        for series, masks in self._series.items():
            total = sum(m.mask.numel() for m in masks)
            self.values.setdefault(series, []).append(1.0 - sum(int(m.mask.sum()) for m in masks) / total)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._series and trainer.global_step % self._every == 0:
            self._record(trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        loggers = wandb_loggers(trainer)
        if not self._series or not loggers:
            return
        self._record(trainer.global_step)
        import wandb

        chart = wandb.plot.line_series(xs=self.steps, ys=list(self.values.values()), keys=list(self.values),
                                       title="sparsity of the pruned encoder weights per layer", xname="step")
        for logger in loggers:
            logger.experiment.log({self.KEY: chart, "trainer/global_step": trainer.global_step})


# -- sweeps -------------------------------------------------------------------------------------
def _override_value(value: str) -> str:
    """``value`` as the right-hand side of a Hydra override (quoted unless it is a plain word)."""
    if re.fullmatch(r"[\w.\-@:]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sweep_run_overrides(config, study_name: str, trial_number: int, params: Mapping[str, str]) -> list[str]:
    """Job overrides that file a trial's W&B run with its study: the study as its W&B group (unless the sweep
    sets one), ``trial`` as its job type, ``-trial<n>`` after its name, and ``sweep.{study, trial, params.<key>}`` in
    its config (a run's W&B config is its resolved train config). ``params``: the trial's values, formatted as
    its overrides are. Nothing when ``config`` has no W&B logger."""
    wandb_cfg = _select(config, "logger.wandb")
    if wandb_cfg is None:
        return []
    overrides = [f"++sweep.study={_override_value(study_name)}", f"++sweep.trial={trial_number}"]
    overrides += [f"++sweep.params.{key.lstrip('+~')}={value}" for key, value in params.items()]
    if _select(config, "logger.wandb.group") is None:
        overrides.append(f"logger.wandb.group={_override_value(study_name)}")
    if _select(config, "logger.wandb.job_type") is None:
        overrides.append("logger.wandb.job_type=trial")
    name = _select(config, "logger.wandb.name") or study_name
    overrides.append(f"logger.wandb.name={_override_value(f'{name}-trial{trial_number}')}")
    return overrides


def objective_names(config, n_objectives: int) -> list[str]:
    """The metric each objective is (``objectives``, else ``optimized_metric``), or ``objective <i>``."""
    names = _select(config, "objectives")
    names = [names] if isinstance(names, str) else list(names or [])
    if len(names) != n_objectives and n_objectives == 1 and _select(config, "optimized_metric") is not None:
        names = [_select(config, "optimized_metric")]
    return [str(n) for n in names] if len(names) == n_objectives else [f"objective {i}" for i in range(n_objectives)]


@dataclass(frozen=True)
class SweepTrial:
    number: int
    params: dict[str, Any]
    values: list[float]


def sweep_charts(study_name: str, trials: Sequence[SweepTrial], objectives: Sequence[str],
                 directions: Sequence[str]) -> dict[str, Any]:
    """A study's complete trials as a table (``<study>/trials``: number, parameters, objective values, on the
    Pareto front) and, with two objectives, the first vs the second as a scatter and as a Plotly figure with the
    Pareto front (the trials no other trial beats in both objectives, each in its direction)."""
    import wandb

    params = list(dict.fromkeys(k for t in trials for k in t.params))
    front: set[int] = set()
    charts: dict[str, Any] = {}
    if len(objectives) == 2:
        sign = [1 if directions[0] == "maximize" else -1, 1 if directions[1] == "minimize" else -1]
        front = {trials[i].number for i in pareto_front([(sign[0] * t.values[0], sign[1] * t.values[1])
                                                         for t in trials])}
    columns = ["trial", *params, *(chart_field(o) for o in objectives), "on Pareto front"]
    data = [[t.number, *(t.params.get(p) for p in params), *t.values, t.number in front] for t in trials]
    table = wandb.Table(columns=columns, data=data)
    charts[sweep_trials_key(study_name)] = table
    if len(objectives) == 2:
        y, x = objectives
        charts[sweep_scatter_key(study_name, y, x)] = wandb.plot.scatter(table, chart_field(x), chart_field(y),
                                                                         title=f"{study_name}: {y} vs {x}")
        series = {None: [(f"trial {t.number}", t.values[1], t.values[0], t.number in front) for t in trials]}
        figure = pareto_figure(series, x, y, f"{study_name}: {y} ({directions[0]}) vs {x} ({directions[1]}), "
                                             "Pareto front of the trials")
        charts[sweep_pareto_key(study_name, y, x)] = wandb.Plotly(figure)
    else:
        charts[f"{study_name}/{objectives[0]} by trial"] = wandb.plot.scatter(
            table, "trial", chart_field(objectives[0]), title=f"{study_name}: {objectives[0]} by trial")
    return charts


def log_sweep_run(config, study_name: str, trials: Sequence[SweepTrial], directions: Sequence[str]) -> None:
    """The study's own W&B run (group = the study, job type ``sweep``, under ``hydra.sweep.dir``) with
    ``sweep_charts``; the W&B settings are the sweep config's ``logger.wandb`` (nothing without it)."""
    wandb_cfg = _select(config, "logger.wandb")
    if wandb_cfg is None or not trials:
        return
    from lowbit.tracking import online_or_offline, resolve_wandb_mode

    mode = online_or_offline(resolve_wandb_mode(_select(config, "logger.wandb.mode") or "auto"))
    if mode == "disabled":
        return
    import wandb

    objectives = objective_names(config, len(directions))
    directory = Path(_select(config, "hydra.sweep.dir") or ".")
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=_select(config, "logger.wandb.project") or "lowbit",
                     entity=_select(config, "logger.wandb.entity"), name=f"{study_name}-sweep", group=study_name,
                     job_type="sweep", dir=str(directory), mode=mode,
                     config={"study": study_name, "objectives": objectives, "directions": list(directions),
                             "n_complete": len(trials)})
    run.log(sweep_charts(study_name, trials, objectives, directions))
    run_dir = Path(run.dir).parent
    print(f"W&B sweep run of study {study_name!r} logged ({run.settings.mode}) to {run_dir}"
          + (f" (upload later with: wandb sync {run_dir})" if run.settings.mode == "offline" else ""))
    run.finish()
