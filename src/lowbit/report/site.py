"""The static site: ``index.html``, one page per table, sweep, run and Hessian spectrum, and ``assets/`` (the
bundled ``plotly.min.js``, CSS, JS). Pages link to each other and to run directories by relative path, so the
folder opens from disk and can be moved together with the runs it shows."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.errors import check
from lowbit.report import compare, plots, templates
from lowbit.report.curves import training_curves
from lowbit.report.discover import (
    DEV_METRIC,
    METHOD_GROUPS,
    NEUTRAL_OPTIONS,
    NO_METHOD,
    Findings,
    HessianSpectrum,
    Run,
    Sweep,
    TableResult,
    open_storage,
    read_spectrum,
)

ASSETS = "assets"
#: the site's page folders: their pages are rewritten on every build (stale ones removed)
PAGE_DIRS = ("runs", "tables", "sweeps", "hessian")


def plotly_js() -> Path:
    """The minified plotly.js shipped inside the plotly Python package (no CDN: the report works offline)."""
    try:
        import plotly
    except ImportError:
        check(False, "the report needs plotly (pip install 'plotly>=5'): its plotly.min.js draws the plots")
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    check(path.is_file(), f"plotly is installed but has no {path}: reinstall plotly")
    return path


@dataclass
class Pages:
    """Where each thing's page goes, relative to the site root."""
    runs: dict[Path, str] = field(default_factory=dict)
    tables: dict[int, str] = field(default_factory=dict)
    sweeps: dict[int, str] = field(default_factory=dict)
    spectra: dict[int, str] = field(default_factory=dict)


class FigureIds:
    def __init__(self) -> None:
        self.n = 0

    def add(self, figure: dict[str, Any]) -> dict[str, str]:
        self.n += 1
        return {"id": f"plot-{self.n}", "json": figure_json(figure)}


def _finite(node: Any) -> Any:
    if isinstance(node, float) and not math.isfinite(node):
        return None
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_finite(v) for v in node]
    return node


def figure_json(figure: dict[str, Any]) -> str:
    """JSON safe to inline in ``<script type="application/json">`` (no ``</script>`` or ``<!--`` inside)."""
    text = json.dumps(_finite(figure), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "item"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}_{n}"
    taken.add(slug)
    return slug


def _label(path: Path, roots: list[Path]) -> str:
    """A path for display and page names: relative to the working directory when under it, else to the root it
    was found under (the root's own name first)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        pass
    for root in roots:
        try:
            rel = path.resolve().relative_to(root.resolve())
        except ValueError:
            continue
        return str(Path(root.resolve().name) / rel)
    return str(path)


def _href(target: Path, page: Path) -> str:
    """A relative link from the page's file to a file or directory."""
    rel = os.path.relpath(target.resolve(), page.resolve().parent)
    return rel.replace(os.sep, "/") + ("/" if target.is_dir() else "")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 or value == 0 else f"{value:.6g}"
    return str(value)


def _run_facets(run: Run) -> dict[str, list[str]]:
    return {"tasks": [run.task] if run.task else [], "models": [run.model] if run.model else [],
            "methods": run.methods}


def _spec_row_facets(spec: Any, row_name: str) -> dict[str, list[str]]:
    """Task and methods of a table row without a run dir (a committed CSV), from its spec's overrides."""
    row = next((r for r in spec.rows if r.name == row_name), None) if spec is not None else None
    if row is None:
        return {"tasks": [], "models": [], "methods": []}
    task, methods = "", {}
    for override in [*row.base(spec.base_overrides), *row.overrides]:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "data":
            task = value
        elif key in METHOD_GROUPS:
            methods[key] = value
    tokens = [f"{g}={methods[g]}" for g in METHOD_GROUPS if methods.get(g) not in NEUTRAL_OPTIONS]
    return {"tasks": [task] if task else [], "models": [], "methods": tokens or [NO_METHOD]}


def _union(items: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    return {k: sorted({v for item in items for v in item[k]}) for k in ("tasks", "models", "methods")}


def _filter_options(items: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    u = _union(items)
    return {"task": u["tasks"], "method": u["methods"], "model": u["models"]}


def _run_links(run: Run, page: Path) -> list[tuple[str, str]]:
    links = [("dir", _href(run.path, page)), ("summary", _href(run.path / "summary.json", page))]
    for label, target in (("config", run.path / ".hydra" / "config.yaml"), ("ckpt", run.path / "checkpoints")):
        if target.exists():
            links.append((label, _href(target, page)))
    return links


class SiteWriter:
    def __init__(self, findings: Findings, out_dir: Path) -> None:
        import jinja2

        self.f = findings
        self.out = out_dir
        self.env = jinja2.Environment(
            loader=jinja2.DictLoader({"base.html": templates.BASE, "macros.html": templates.MACROS,
                                      "index.html": templates.INDEX, "table.html": templates.TABLE,
                                      "sweep.html": templates.SWEEP, "run.html": templates.RUN,
                                      "hessian.html": templates.HESSIAN}),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.pages = Pages()
        self.built = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        self.roots = [_label(r, []) for r in findings.roots]
        self.curves_cache: dict[Path, tuple[dict, list[Path]]] = {}

    # -- helpers ------------------------------------------------------------------------------
    def render(self, template: str, page: str, **context: Any) -> Path:
        path = self.out / page
        path.parent.mkdir(parents=True, exist_ok=True)
        root = "../" * page.count("/")
        html = self.env.get_template(template).render(root=root, built=self.built, roots=self.roots, **context)
        path.write_text(html, encoding="utf-8")
        return path

    def curves(self, run: Run) -> tuple[dict, list[Path]]:
        if run.path not in self.curves_cache:
            self.curves_cache[run.path] = training_curves(run.path)
        return self.curves_cache[run.path]

    def assign_pages(self) -> None:
        taken: set[str] = set()
        for path in sorted(self.f.all_runs):
            self.pages.runs[path] = f"runs/{_slug(_label(path, self.f.roots), taken)}.html"
        for i, t in enumerate(self.f.tables):
            self.pages.tables[i] = f"tables/{_slug(t.name + '__' + _label(t.source, self.f.roots), taken)}.html"
        for i, s in enumerate(self.f.sweeps):
            self.pages.sweeps[i] = f"sweeps/{_slug(s.study_name + '__' + _label(s.directory, self.f.roots), taken)}.html"
        for i, h in enumerate(self.f.spectra):
            self.pages.spectra[i] = f"hessian/{_slug(_label(h.path, self.f.roots), taken)}.html"

    def write_assets(self) -> None:
        assets = self.out / ASSETS
        assets.mkdir(parents=True, exist_ok=True)
        source = plotly_js()
        target = assets / "plotly.min.js"
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, target)
        (assets / "report.css").write_text(templates.CSS)
        (assets / "report.js").write_text(templates.JS)

    # -- pages --------------------------------------------------------------------------------
    def write(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        for folder in PAGE_DIRS:  # pages of runs or tables no longer under the roots
            for stale in (self.out / folder).glob("*.html"):
                stale.unlink()
        self.write_assets()
        self.assign_pages()
        for run in self.f.all_runs.values():
            self.write_run(run)
        tables = [self.write_table(i, t) for i, t in enumerate(self.f.tables)]
        sweeps = [self.write_sweep(i, s) for i, s in enumerate(self.f.sweeps)]
        spectra = [self.write_spectrum(i, h) for i, h in enumerate(self.f.spectra)]
        return self.write_index(tables, sweeps, spectra)

    def write_index(self, tables: list[dict], sweeps: list[dict], spectra: list[dict]) -> Path:
        page = self.out / "index.html"
        runs = []
        for run in self.f.runs:
            runs.append({"name": _label(run.path, self.f.roots), "href": self.pages.runs[run.path], **_run_facets(run),
                         "metrics_text": ", ".join(f"{k} {_fmt(v)}" for k, v in run.metrics.items()) or "–",
                         "size": _fmt(run.summary.get("model/size_mb")),
                         "compression": _fmt(run.summary.get("model/compression"))})
        facets = [*tables, *sweeps, *runs]
        counts = (f"{len(tables)} table(s), {len(sweeps)} sweep(s), {len(runs)} single run(s), "
                  f"{len(self.f.all_runs)} run directories in all")
        self.render("index.html", "index.html", title="lowbit experiments", counts=counts, tables=tables,
                    sweeps=sweeps, runs=runs, spectra=spectra, options=_filter_options(facets),
                    tables_without_results=self.f.tables_without_results, problems=self.f.problems)
        return page

    def write_run(self, run: Run) -> None:
        page_name = self.pages.runs[run.path]
        page = self.out / page_name
        ids = FigureIds()
        figures, notes = [], []
        curves, files = self.curves(run)
        losses = {k: v for k, v in curves.items() if "loss" in k}
        evals = {k: v for k, v in curves.items() if _is_dev_metric(k)}
        if losses:
            figures.append(ids.add(plots.curves_figure(losses, "training losses", "loss")))
        if evals:
            figures.append(ids.add(plots.curves_figure(evals, "dev metrics", "value")))
        if not curves:
            looked = ", ".join(str(p.relative_to(run.path)) for p in files) or "csv/version_*/metrics.csv, wandb/*.wandb"
            notes.append(f"No training curves: no history in {looked} (runs with logger=none keep none; "
                         "logger=csv or logger=wandb, the default, do).")
        spectrum = next((s for s in (read_spectrum(p) for p in run.hessian_files()) if s), None)
        bits = {run.path.name: run.layer_bits} if run.layer_bits else {}
        if spectrum or bits:
            figures.append(ids.add(plots.hessian_bits_figure(_layer_blocks(spectrum), bits,
                                                             "per-layer Hessian and bits")))
        headline = [(k, _fmt(v)) for k, v in run.summary.items()
                    if k.startswith(("val", "model/")) or k in ("bit_assignment/layer_bits", "pruning/sparsity")]
        config_file = run.path / ".hydra" / "config.yaml"
        view = {"path": str(run.path), "links": _run_links(run, page), **_run_facets(run), "headline": headline,
                "summary": [(k, _fmt(v)) for k, v in run.summary.items()],
                "config_text": config_file.read_text() if config_file.is_file() else ""}
        self.render("run.html", page_name, title=_label(run.path, self.f.roots), r=view, figures=figures, notes=notes)

    def write_table(self, index: int, table: TableResult) -> dict[str, Any]:
        page_name = self.pages.tables[index]
        page = self.out / page_name
        spec = table.spec
        comps = compare.comparisons(table.columns, spec.shows_percent if spec else None)
        used = {"row", "paper_row", "paper source"} | {c.ours_column for c in comps}
        used |= {p for c in comps for p in c.paper_columns}
        rest = [c for c in table.columns if c not in used]
        header = [{"text": "row", "title": "", "css": ""}, {"text": "paper row", "title": "", "css": ""}]
        for c in comps:
            header.append({"text": c.ours_column if c.ours_column.startswith("ours") else f"ours {c.metric}",
                           "title": "", "css": "num"})
            if c.paper_columns:
                header.append({"text": " / ".join(c.paper_columns), "title": "the paper's number", "css": "num"})
                header.append({"text": f"Δ {c.metric}", "title": "ours − paper", "css": "num"})
        header += [{"text": c, "title": "", "css": "num"} for c in rest]
        header += [{"text": "paper source", "title": "", "css": ""}, {"text": "run", "title": "", "css": ""}]
        rows, facets = [], []
        for r in table.rows:
            name = str(r.get("row"))
            run = table.row_runs.get(name)
            row_facets = _run_facets(run) if run else _spec_row_facets(spec, name)
            facets.append(row_facets)
            cells = [{"text": name, "href": _href(self.out / self.pages.runs[run.path], page) if run else "",
                      "css": "", "title": ""},
                     {"text": _fmt(r.get("paper_row")), "href": "", "css": "", "title": ""}]
            for c in comps:
                cells.append({"text": _fmt(r.get(c.ours_column)), "href": "", "css": "num ours", "title": ""})
                if c.paper_columns:
                    column, value = compare.paper_value(r, c)
                    d = compare.delta(r, c)
                    cells.append({"text": _fmt(value), "href": "", "css": "num paper", "title": column or ""})
                    cells.append({"text": "" if d is None else f"{d:+.2f}", "href": "",
                                  "css": f"num delta {compare.delta_class(d, c)}".strip(),
                                  "title": f"{c.ours_column} − {column}" if d is not None else ""})
            cells += [{"text": _fmt(r.get(c)), "href": "", "css": "num", "title": ""} for c in rest]
            cells.append({"text": _fmt(r.get("paper source")), "href": "", "css": "", "title": ""})
            rows.append({"name": name, "cells": cells, "run": {"links": _run_links(run, page)} if run else None,
                         **row_facets})
        figures, plot_notes = self._table_figures(table, comps, page, dict(zip((r["name"] for r in rows), facets)))
        view = {"name": table.name, "title": spec.title if spec else table.name, "source": str(table.source),
                "note": table.note, "header": header, "rows": rows,
                "paper_source": spec.paper_source if spec else _fmt(table.rows[0].get("paper source")) if table.rows else "",
                "notes": " ".join(spec.notes.split()) if spec and spec.notes else ""}
        self.render("table.html", page_name, title=f"Table {table.name}", t=view, figures=figures,
                    plot_notes=plot_notes, options=_filter_options(facets))
        return {"name": table.name, "href": page_name, "title": view["title"], "source": _label(table.source, self.f.roots),
                "note": table.note, "n_rows": f"{len(table.rows)}" + (f" / {len(spec.rows)}" if spec else ""),
                **_union(facets)}

    def _table_figures(self, table: TableResult, comps: list[compare.Comparison], page: Path,
                       row_facets: dict[str, dict[str, list[str]]]) -> tuple[list[dict], list[str]]:
        ids = FigureIds()
        figures, notes = [], []
        metric = next((c for c in comps if c.metric != compare.SIZE), None)
        size = next((c for c in comps if c.metric == compare.SIZE), None)
        sizes = [s for r in table.rows if (s := _num(r.get(size.ours_column) if size else None)) is not None]
        if metric and size and sizes and max(sizes) - min(sizes) <= 0.01 * max(sizes):
            notes.append("No accuracy-vs-size plot: every row has the same size (this table varies something else).")
        elif metric and size:
            points, paper = [], []
            for r in table.rows:
                name = str(r.get("row"))
                run = table.row_runs.get(name)
                url = _href(self.out / self.pages.runs[run.path], page) if run else None
                tasks = row_facets.get(name, {}).get("tasks") or [""]
                points.append({"label": name, "size": _num(r.get(size.ours_column)),
                               "value": _num(r.get(metric.ours_column)), "url": url, "group": tasks[0]})
                _, paper_metric = compare.paper_value(r, metric)
                _, paper_size = compare.paper_value(r, size)
                paper.append({"label": str(r.get("paper_row")), "size": _num(paper_size), "value": _num(paper_metric)})
            figures.append(ids.add(plots.accuracy_vs_size(points, metric.ours_column,
                                                          f"{table.name}: {metric.metric} vs size", paper)))
        elif metric:
            notes.append("No accuracy-vs-size plot: this table has no 'size MB' column (a computed table).")
        bits = {name: run.layer_bits for name, run in table.row_runs.items() if run.layer_bits}
        spectrum = next((s for run in table.row_runs.values() for p in run.hessian_files()
                         if (s := read_spectrum(p))), None)
        if bits or spectrum:
            figures.append(ids.add(plots.hessian_bits_figure(_layer_blocks(spectrum), bits,
                                                             f"{table.name}: per-layer Hessian and bits")))
        by_row = {name: self.curves(run)[0] for name, run in table.row_runs.items()}
        for key in ["train/loss", *([metric.metric] if metric else [])]:  # the loss, and the table's first metric
            series = {name: c[key] for name, c in by_row.items() if key in c}
            if series:
                figures.append(ids.add(plots.curves_figure(series, f"{table.name}: {key} by row", key)))
        if table.row_runs and not any(by_row.values()):
            notes.append("No training curves: the rows' loggers kept no history (logger=none).")
        return figures, notes

    def write_sweep(self, index: int, sweep: Sweep) -> dict[str, Any]:
        page_name = self.pages.sweeps[index]
        page = self.out / page_name
        view = sweep_view(sweep)
        ids = FigureIds()
        figures = []
        complete = view.pop("complete")
        maximize = view.pop("maximize")
        front = view.pop("front")
        if len(sweep.objectives) >= 2 and complete:
            figures.append(ids.add(plots.sweep_pareto_figure(complete, sweep.objectives, maximize, front)))
        for i, name in enumerate(sweep.objectives):
            if complete:
                figures.append(ids.add(plots.sweep_history_figure(complete, name, i, maximize[i])))
        for name, importances in view.pop("importances").items():
            figures.append(ids.add(plots.importance_figure(importances, name)))
        for t in view["trials"]:
            run = sweep.trial_runs.get(t["number"])
            t["run_href"] = _href(self.out / self.pages.runs[run.path], page) if run else ""
            t["dir_href"] = _href(Path(t["dir"]), page) if t["dir"] and Path(t["dir"]).is_dir() else ""
        view["dir_href"] = _href(sweep.directory, page)
        facets = [_run_facets(r) for r in sweep.trial_runs.values()]
        self.render("sweep.html", page_name, title=f"Sweep {sweep.study_name}", s=view, figures=figures)
        return {"study_name": sweep.study_name, "href": page_name, "objectives_text": view["objectives_text"],
                "states_text": view["states_text"], "best_text": view["best_text"],
                "storage_path": _label(sweep.storage_path, self.f.roots), **_union(facets)}

    def write_spectrum(self, index: int, spectrum: HessianSpectrum) -> dict[str, Any]:
        page_name = self.pages.spectra[index]
        ids = FigureIds()
        data = spectrum.data
        about = (f"model {data.get('model', '?')}, task {data.get('task', '?')}, "
                 f"{data.get('n_examples', '?')} examples in {data.get('n_batches', '?')} batches")
        blocks = [{"name": name, "kind": b.get("kind"), "numel": _fmt(b.get("numel")), "mean": _fmt(b.get("mean")),
                   "std": _fmt(b.get("std")), "sensitivity": _fmt(b.get("sensitivity")), "summed": _fmt(b.get("summed")),
                   "note": ("negative top eigenvalue; " if b.get("negative") else "")
                   + ("" if b.get("converged", True) else "not converged")}
                  for name, b in data["blocks"].items()]
        layers = _layer_blocks(spectrum)
        figures = [ids.add(plots.hessian_bits_figure(layers, {}, "top Hessian eigenvalue per encoder layer"))] if layers else []
        view = {"path": str(spectrum.path), "about": about, "blocks": blocks}
        self.render("hessian.html", page_name, title=f"Hessian spectrum {spectrum.path.name}", h=view, figures=figures)
        return {"name": _label(spectrum.path, self.f.roots), "href": page_name, "about": about}


def _is_dev_metric(key: str) -> bool:
    """A task's dev metric, of the main stage (``val/acc``) or another (``finetune/val/acc``)."""
    return DEV_METRIC.match(key) is not None or DEV_METRIC.match(key.split("/", 1)[-1]) is not None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _layer_blocks(spectrum: HessianSpectrum | None) -> list[dict[str, Any]]:
    if spectrum is None:
        return []
    return sorted((b for b in spectrum.data["blocks"].values() if b.get("kind") == "layer"), key=lambda b: b["layer"])


def dashboard_command(sweep: Sweep) -> str:
    """``optuna-dashboard`` on the sweep's storage: its live view (a journal file is given as its path)."""
    if sweep.storage.startswith("journal:///"):
        return f"optuna-dashboard {sweep.storage_path}"
    return f"optuna-dashboard {sweep.storage}"


def sweep_view(sweep: Sweep) -> dict[str, Any]:
    """What the sweep page shows, read from its Optuna study: trials, best ones, parameter importance."""
    import optuna
    from optuna.trial import TrialState

    view: dict[str, Any] = {"study_name": sweep.study_name, "storage": sweep.storage, "directory": str(sweep.directory),
                            "dashboard": dashboard_command(sweep), "objectives": sweep.objectives, "params": [],
                            "trials": [], "notes": [], "error": "", "complete": [], "maximize": [], "front": set(),
                            "importances": {}, "best_text": "–", "states_text": "",
                            "objectives_text": ", ".join(sweep.objectives)}
    try:
        study = optuna.load_study(study_name=sweep.study_name, storage=open_storage(sweep.storage))
    except Exception as e:  # noqa: BLE001 - the page says why instead of failing the whole report
        view["error"] = f"cannot read the study: {' '.join(str(e).split())}"
        return view
    maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    params = sorted({p for t in trials for p in t.params})
    try:
        best = study.best_trials if complete else []
    except (RuntimeError, ValueError):
        best = []
    front = {t.number for t in best}
    view.update(
        maximize=maximize, front=front, params=params,
        complete=[{"number": t.number, "values": list(t.values)} for t in complete],
        states_text=", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "no trials yet",
        objectives_text=", ".join(f"{n} ({'max' if m else 'min'})" for n, m in zip(sweep.objectives, maximize)),
        trials=[{"number": t.number, "state": t.state.name.lower(), "front": t.number in front,
                 "objective_values": [_fmt(v) for v in (t.values or [None] * len(maximize))],
                 "param_values": [_fmt(t.params.get(p)) for p in params],
                 "dir": t.user_attrs.get("lowbit_output_dir") or ""} for t in trials])
    if best:
        shown = best if len(maximize) > 1 else best[:1]
        view["best_text"] = "; ".join(
            f"#{t.number}: " + ", ".join(f"{n}={_fmt(v)}" for n, v in zip(sweep.objectives, t.values)) for t in shown[:3]
        ) + (f" (+{len(shown) - 3} more on the front)" if len(shown) > 3 else "")
    view["importances"], why = parameter_importances(study, complete, sweep.objectives)
    view["notes"] += why
    return view


def parameter_importances(study: Any, complete: list, objectives: list[str]) -> tuple[dict[str, dict], list[str]]:
    """({objective: {param: importance}}, why some or all are missing), by Optuna's fANOVA evaluator."""
    import optuna

    with_params = [t for t in complete if t.params]
    if len(with_params) < 2:
        return {}, ["No parameter importance: it needs at least 2 completed trials with parameters, this study has "
                    + f"{len(with_params)}."]
    varied = [p for p in sorted({p for t in with_params for p in t.params})
              if len({repr(t.params.get(p)) for t in with_params}) > 1]
    if not varied:
        return {}, ["No parameter importance: every completed trial has the same parameter values."]
    import warnings

    out: dict[str, dict] = {}
    errors = []
    for i, name in enumerate(objectives):
        # fANOVA: the share of the objective's variance each parameter explains (the same for max and min;
        # Optuna's default evaluator, PED-ANOVA, ranks for low values only)
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API and few-trials notices: the page shows the numbers
                out[name] = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, params=varied, target=lambda t, i=i: t.values[i])
        except (RuntimeError, ValueError) as e:  # e.g. every trial scored the same: no variance to explain
            errors.append(f"No parameter importance for {name}: {' '.join(str(e).split())}")
    return out, errors
