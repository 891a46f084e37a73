"""Plotly figures as plain JSON-able dicts (``{"data": [...], "layout": {...}}``), rendered in the page by the
bundled ``plotly.min.js`` (``Plotly.newPlot``): no Python plotly objects, so a figure is exactly what is written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lowbit.pareto import pareto_front

Figure = dict[str, Any]

#: colours of the report (plotly's default cycle), and of the paper's points
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
PAPER_COLOUR = "#7f7f7f"
FRONT_COLOUR = "#d62728"


def _layout(title: str, x: str, y: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "xaxis": {"title": {"text": x}}, "yaxis": {"title": {"text": y}},
            "margin": {"l": 60, "r": 20, "t": 50, "b": 95}, "hovermode": "closest",
            "legend": {"orientation": "h", "x": 0, "y": -0.25, "yanchor": "top"},
            **extra}


def accuracy_vs_size(points: Sequence[dict[str, Any]], metric: str, title: str,
                     paper: Sequence[dict[str, Any]] = ()) -> Figure:
    """Ours (and the paper's, where it gives sizes) as metric vs size in MB, with our Pareto front (max metric,
    min size). ``points``: ``{"label", "size", "value", "url"?, "group"?}``; rows of different groups (a table of
    several tasks) get a trace and a front each, as their metrics do not compare."""
    ours = [p for p in points if p["size"] is not None and p["value"] is not None]
    groups = list(dict.fromkeys(p.get("group") or "" for p in ours))
    data: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        members = [p for p in ours if (p.get("group") or "") == group]
        suffix = f" ({group})" if len(groups) > 1 and group else ""
        colour = COLOURS[i % len(COLOURS)]
        data.append({
            "type": "scatter", "mode": "markers", "name": f"ours{suffix}", "x": [p["size"] for p in members],
            "y": [p["value"] for p in members], "text": [p["label"] for p in members],
            "customdata": [p.get("url") for p in members], "marker": {"size": 10, "color": colour},
            "hovertemplate": "%{text}<br>%{x:.3f} MB<br>" + metric + " %{y}<extra></extra>"})
        front = sorted(pareto_front([(p["value"], p["size"]) for p in members]), key=lambda j: members[j]["size"])
        if front:  # only the front is labelled: the other points' names are in their hover text
            data.append({"type": "scatter", "mode": "lines+text", "name": f"Pareto front{suffix or ' (ours)'}",
                         "line": {"color": colour if suffix else FRONT_COLOUR, "dash": "dot", "shape": "hv"},
                         "x": [members[j]["size"] for j in front], "y": [members[j]["value"] for j in front],
                         "text": [members[j]["label"] for j in front], "textposition": "top right",
                         "hoverinfo": "skip"})
    shown = [p for p in paper if p["size"] is not None and p["value"] is not None]
    if shown:
        data.append({"type": "scatter", "mode": "markers", "name": "paper", "x": [p["size"] for p in shown],
                     "y": [p["value"] for p in shown], "text": [p["label"] for p in shown],
                     "marker": {"size": 9, "symbol": "diamond-open", "color": PAPER_COLOUR},
                     "hovertemplate": "paper: %{text}<br>%{x} MB<br>%{y}<extra></extra>"})
    return {"data": data, "layout": _layout(title, "size (MB)", metric)}


def curves_figure(curves: dict[str, list[tuple[float, float]]], title: str, y_title: str) -> Figure:
    data = [{"type": "scatter", "mode": "lines+markers" if len(points) < 30 else "lines", "name": key,
             "x": [x for x, _ in points], "y": [y for _, y in points], "line": {"color": COLOURS[i % len(COLOURS)]}}
            for i, (key, points) in enumerate(sorted(curves.items()))]
    return {"data": data, "layout": _layout(title, "step", y_title)}


def hessian_bits_figure(layers: Sequence[dict[str, Any]] | None, bits: dict[str, Sequence[int | None]],
                        title: str) -> Figure:
    """Per encoder layer: the top Hessian eigenvalue (Q-BERT's sensitivity: mean + std over batches, with the
    mean and std as bar and error bar) and the weight bits each run gave it (right axis)."""
    data: list[dict[str, Any]] = []
    if layers:
        data.append({"type": "bar", "name": "top eigenvalue (mean ± std)", "x": [b["layer"] for b in layers],
                     "y": [b.get("mean") for b in layers],
                     "error_y": {"type": "data", "array": [b.get("std") or 0 for b in layers], "visible": True},
                     "customdata": [b.get("sensitivity") for b in layers], "marker": {"color": "#9ecae1"},
                     "hovertemplate": "layer %{x}<br>mean λ %{y:.4g}<br>sensitivity (mean+std) %{customdata:.4g}"
                                      "<extra></extra>"})
    for i, (label, per_layer) in enumerate(bits.items()):
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"bits: {label}", "yaxis": "y2" if layers else "y",
                     "x": list(range(len(per_layer))), "y": [32 if b is None else b for b in per_layer],
                     "line": {"color": COLOURS[(i + 1) % len(COLOURS)], "shape": "hvh"},
                     "hovertemplate": f"{label}<br>layer %{{x}}: %{{y}} bits<extra></extra>"})
    layout = _layout(title, "encoder layer", "top Hessian eigenvalue" if layers else "weight bits",
                     xaxis={"title": {"text": "encoder layer"}, "dtick": 1})
    if layers and bits:
        layout["yaxis2"] = {"title": {"text": "weight bits"}, "overlaying": "y", "side": "right", "rangemode": "tozero",
                            "dtick": 1}
    return {"data": data, "layout": layout}


def sweep_history_figure(trials: Sequence[dict[str, Any]], objective: str, index: int, maximize: bool) -> Figure:
    """One objective over the trials (``{"number", "values"}``, complete ones), with the best so far."""
    xs = [t["number"] for t in trials]
    ys = [t["values"][index] for t in trials]
    best, running = [], None
    for y in ys:
        running = y if running is None else (max(running, y) if maximize else min(running, y))
        best.append(running)
    data = [{"type": "scatter", "mode": "markers", "name": objective, "x": xs, "y": ys,
             "marker": {"color": COLOURS[0], "size": 8}, "hovertemplate": "trial %{x}<br>%{y}<extra></extra>"},
            {"type": "scatter", "mode": "lines", "name": "best so far", "x": xs, "y": best,
             "line": {"color": FRONT_COLOUR, "shape": "hv"}}]
    return {"data": data, "layout": _layout(f"history: {objective} ({'max' if maximize else 'min'})", "trial",
                                            objective)}


def sweep_pareto_figure(trials: Sequence[dict[str, Any]], names: Sequence[str], maximize: Sequence[bool],
                        front_numbers: set[int]) -> Figure:
    """The first two objectives of a multi-objective sweep, the Pareto-optimal trials highlighted."""
    def trace(selected: list[dict[str, Any]], name: str, colour: str, size: int) -> dict[str, Any]:
        return {"type": "scatter", "mode": "markers", "name": name, "x": [t["values"][0] for t in selected],
                "y": [t["values"][1] for t in selected], "text": [f"trial {t['number']}" for t in selected],
                "marker": {"color": colour, "size": size},
                "hovertemplate": "%{text}<br>" + f"{names[0]} %{{x}}<br>{names[1]} %{{y}}<extra></extra>"}

    front = sorted((t for t in trials if t["number"] in front_numbers), key=lambda t: t["values"][0])
    data = [trace([t for t in trials if t["number"] not in front_numbers], "trials", COLOURS[0], 8),
            trace(front, "Pareto front", FRONT_COLOUR, 11)]
    arrows = [f"{n} ({'max' if m else 'min'})" for n, m in zip(names, maximize)]
    return {"data": data, "layout": _layout("Pareto front", arrows[0], arrows[1])}


def importance_figure(importances: dict[str, float], objective: str) -> Figure:
    items = sorted(importances.items(), key=lambda kv: kv[1])
    return {"data": [{"type": "bar", "orientation": "h", "x": [v for _, v in items], "y": [k for k, _ in items],
                      "marker": {"color": COLOURS[2]}, "hovertemplate": "%{y}: %{x:.3f}<extra></extra>"}],
            "layout": _layout(f"parameter importance for {objective} (fANOVA)", "importance", "",
                              margin={"l": 200, "r": 20, "t": 50, "b": 50})}
