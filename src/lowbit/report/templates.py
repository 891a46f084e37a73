"""The report's Jinja2 templates, CSS and JS (kept in Python so an installed package has them without package data).

Pages are static: every figure is inlined as JSON (``<script type="application/json">``) and drawn by the bundled
``assets/plotly.min.js``; a page opened from disk (``file://``) may load scripts by relative path but not fetch
files, so nothing is fetched.
"""

BASE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · lowbit report</title>
<link rel="stylesheet" href="{{ root }}assets/report.css">
<script src="{{ root }}assets/plotly.min.js"></script>
<script src="{{ root }}assets/report.js"></script>
</head>
<body>
<header><a class="home" href="{{ root }}index.html">lowbit report</a>
<span class="built">built {{ built }} from {{ roots | join(", ") }}</span></header>
<main>
<h1>{{ title }}</h1>
{% block content %}{% endblock %}
</main>
</body>
</html>
"""

MACROS = """
{% macro plot(figure) -%}
<div class="plot" id="{{ figure.id }}" data-figure="{{ figure.id }}-data"></div>
<script type="application/json" id="{{ figure.id }}-data">{{ figure.json | safe }}</script>
{%- endmacro %}

{% macro filters(options, scope) -%}
{% if options.task or options.method or options.model %}
<form class="filters" data-scope="{{ scope }}" onsubmit="return false">
  <strong>Filter</strong>
  {% for key, label in [("task", "task"), ("method", "method"), ("model", "model")] %}
  <label>{{ label }}
    <select class="filter" name="{{ key }}" data-key="{{ key }}">
      <option value="">all</option>
      {% for value in options[key] %}<option value="{{ value }}">{{ value }}</option>{% endfor %}
    </select>
  </label>
  {% endfor %}
  <span class="shown" data-shown-for="{{ scope }}"></span>
</form>
{% endif %}
{%- endmacro %}

{% macro facets(item) -%}
data-filterable data-task="{{ item.tasks | join('|') }}" data-method="{{ item.methods | join('|') }}" data-model="{{ item.models | join('|') }}"
{%- endmacro %}

{% macro links(run) -%}
<span class="links">{% for label, href in run.links %}<a href="{{ href }}">{{ label }}</a>{% if not loop.last %} · {% endif %}{% endfor %}</span>
{%- endmacro %}
"""

INDEX = """{% extends "base.html" %}{% import "macros.html" as m %}
{% block content %}
<p class="lead">{{ counts }}. Runs of a table share a W&amp;B group (the table) with one job type per row;
offline runs upload with <code>wandb sync &lt;run dir&gt;/wandb/offline-run-*</code>. Sweeps have a live view in
<code>optuna-dashboard</code> (the command is on each sweep's page).</p>
{{ m.filters(options, "index") }}

<section id="tables">
<h2>Tables</h2>
{% if tables %}
<table class="list">
<thead><tr><th>table</th><th>title</th><th>rows</th><th>task</th><th>methods</th><th>model</th><th>from</th></tr></thead>
<tbody>
{% for t in tables %}
<tr {{ m.facets(t) }}>
  <td><a href="{{ t.href }}">{{ t.name }}</a></td><td>{{ t.title }}</td><td class="num">{{ t.n_rows }}</td>
  <td>{{ t.tasks | join(", ") }}</td><td>{{ t.methods | join(", ") }}</td><td>{{ t.models | join(", ") }}</td>
  <td class="path">{{ t.source }}{% if t.note %}<br><em>{{ t.note }}</em>{% endif %}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% else %}<p class="empty">No table results under these roots.</p>{% endif %}
{% if tables_without_results %}
<p class="muted">Defined in <code>conf/table/</code> without results here:
{{ tables_without_results | join(", ") }} (run one with <code>python -m lowbit.tables NAME</code>).</p>
{% endif %}
</section>

<section id="sweeps">
<h2>Sweeps</h2>
{% if sweeps %}
<table class="list">
<thead><tr><th>study</th><th>objectives</th><th>trials</th><th>best</th><th>task</th><th>model</th><th>storage</th></tr></thead>
<tbody>
{% for s in sweeps %}
<tr {{ m.facets(s) }}>
  <td><a href="{{ s.href }}">{{ s.study_name }}</a></td><td>{{ s.objectives_text }}</td>
  <td>{{ s.states_text }}</td><td>{{ s.best_text }}</td>
  <td>{{ s.tasks | join(", ") }}</td><td>{{ s.models | join(", ") }}</td><td class="path">{{ s.storage_path }}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% else %}<p class="empty">No Optuna sweep storage (optuna.db) under these roots.</p>{% endif %}
</section>

<section id="runs">
<h2>Runs</h2>
{% if runs %}
<table class="list">
<thead><tr><th>run</th><th>task</th><th>methods</th><th>model</th><th>dev metrics</th><th>size MB</th><th>compression</th></tr></thead>
<tbody>
{% for r in runs %}
<tr {{ m.facets(r) }}>
  <td><a href="{{ r.href }}">{{ r.name }}</a></td><td>{{ r.tasks | join(", ") }}</td><td>{{ r.methods | join(", ") }}</td>
  <td>{{ r.models | join(", ") }}</td><td>{{ r.metrics_text }}</td><td class="num">{{ r.size }}</td>
  <td class="num">{{ r.compression }}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% else %}<p class="empty">No single runs (directories with summary.json outside tables and sweeps).</p>{% endif %}
</section>

{% if problems %}
<section id="problems">
<h2>Not read</h2>
<ul>{% for p in problems %}<li class="error">{{ p }}</li>{% endfor %}</ul>
</section>
{% endif %}

{% if spectra %}
<section id="hessian">
<h2>Hessian spectra</h2>
<ul>{% for h in spectra %}<li><a href="{{ h.href }}">{{ h.name }}</a> <span class="muted">({{ h.about }})</span></li>{% endfor %}</ul>
</section>
{% endif %}
{% endblock %}
"""

TABLE = """{% extends "base.html" %}{% import "macros.html" as m %}
{% block content %}
<p class="lead">{{ t.title }}</p>
<p class="path">{{ t.source }}{% if t.note %} — <em>{{ t.note }}</em>{% endif %}</p>
{% if t.paper_source %}<p class="muted">Paper numbers: {{ t.paper_source }}.{% if t.notes %} {{ t.notes }}{% endif %}</p>{% endif %}
{{ m.filters(options, "table") }}
<div class="scroll">
<table class="results" id="results">
<thead><tr>{% for h in t.header %}<th title="{{ h.title }}" class="{{ h.css }}">{{ h.text }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}
<tr {{ m.facets(row) }} data-row="{{ row.name }}">
{% for c in row.cells %}<td class="{{ c.css }}" title="{{ c.title }}">{% if c.href %}<a href="{{ c.href }}">{{ c.text }}</a>{% else %}{{ c.text }}{% endif %}</td>{% endfor %}
<td>{% if row.run %}{{ m.links(row.run) }}{% else %}<span class="muted">no run dir</span>{% endif %}</td>
</tr>
{% endfor %}
</tbody>
</table>
</div>
<p class="muted">Δ = ours − paper where both exist; green: ours better (higher, or smaller for sizes and errors),
red: worse. Runs of this table share the W&amp;B group <code>{{ t.name }}</code>, one job type per row.</p>
<div class="plots">{% for figure in figures %}{{ m.plot(figure) }}{% endfor %}</div>
{% for note in plot_notes %}<p class="muted">{{ note }}</p>{% endfor %}
{% endblock %}
"""

SWEEP = """{% extends "base.html" %}{% import "macros.html" as m %}
{% block content %}
<p class="lead">{{ s.objectives_text }} · {{ s.states_text }}</p>
<p>Live view (refreshes as trials finish): <code class="command">{{ s.dashboard }}</code>
<span class="muted">(<code>pip install optuna-dashboard</code>)</span></p>
<p class="path">storage {{ s.storage }} · sweep dir <a href="{{ s.dir_href }}">{{ s.directory }}</a></p>
{% if s.error %}<p class="error">{{ s.error }}</p>{% endif %}
<div class="plots">{% for figure in figures %}{{ m.plot(figure) }}{% endfor %}</div>
{% for note in s.notes %}<p class="note">{{ note }}</p>{% endfor %}
<h2>Trials</h2>
<div class="scroll">
<table class="results">
<thead><tr><th>trial</th><th>state</th>{% for o in s.objectives %}<th>{{ o }}</th>{% endfor %}
{% for p in s.params %}<th>{{ p }}</th>{% endfor %}<th>run</th></tr></thead>
<tbody>
{% for t in s.trials %}
<tr class="{{ 'front' if t.front else '' }}"><td class="num">{{ t.number }}{% if t.front %} ★{% endif %}</td><td>{{ t.state }}</td>
{% for v in t.objective_values %}<td class="num">{{ v }}</td>{% endfor %}
{% for v in t.param_values %}<td class="num">{{ v }}</td>{% endfor %}
<td>{% if t.run_href %}<a href="{{ t.run_href }}">run</a>{% endif %}{% if t.dir_href %} · <a href="{{ t.dir_href }}">dir</a>{% endif %}</td></tr>
{% endfor %}
</tbody>
</table>
</div>
<p class="muted">★ Pareto-optimal (or best, with one objective).</p>
{% endblock %}
"""

RUN = """{% extends "base.html" %}{% import "macros.html" as m %}
{% block content %}
<p class="path">{{ r.path }} · {{ m.links(r) }}</p>
<table class="facts">
<tr><th>task</th><td>{{ r.tasks | join(", ") }}</td></tr>
<tr><th>model</th><td>{{ r.models | join(", ") }}</td></tr>
<tr><th>methods</th><td>{{ r.methods | join(", ") }}</td></tr>
{% for k, v in r.headline %}<tr><th>{{ k }}</th><td class="num">{{ v }}</td></tr>{% endfor %}
</table>
<div class="plots">{% for figure in figures %}{{ m.plot(figure) }}{% endfor %}</div>
{% for note in notes %}<p class="note">{{ note }}</p>{% endfor %}
<details><summary>summary.json ({{ r.summary | length }} keys)</summary>
<table class="kv">{% for k, v in r.summary %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
</details>
{% if r.config_text %}<details><summary>.hydra/config.yaml</summary><pre>{{ r.config_text }}</pre></details>{% endif %}
{% endblock %}
"""

HESSIAN = """{% extends "base.html" %}{% import "macros.html" as m %}
{% block content %}
<p class="path">{{ h.path }} · {{ h.about }}</p>
<div class="plots">{% for figure in figures %}{{ m.plot(figure) }}{% endfor %}</div>
<div class="scroll">
<table class="results">
<thead><tr><th>block</th><th>kind</th><th>numel</th><th>mean λ</th><th>std</th><th>sensitivity</th><th>data-summed λ</th><th>note</th></tr></thead>
<tbody>
{% for b in h.blocks %}<tr><td>{{ b.name }}</td><td>{{ b.kind }}</td><td class="num">{{ b.numel }}</td><td class="num">{{ b.mean }}</td>
<td class="num">{{ b.std }}</td><td class="num">{{ b.sensitivity }}</td><td class="num">{{ b.summed }}</td><td>{{ b.note }}</td></tr>{% endfor %}
</tbody>
</table>
</div>
{% endblock %}
"""

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { background: #24292f; color: #fff; padding: 8px 20px; display: flex; gap: 16px; align-items: baseline; }
header a.home { color: #fff; font-weight: 600; text-decoration: none; }
header .built { color: #c9d1d9; font-size: 12px; }
main { padding: 8px 20px 40px; max-width: 1400px; }
h1 { font-size: 22px; margin: 12px 0 6px; } h2 { font-size: 17px; margin: 22px 0 8px; }
a { color: #0969da; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
.lead { font-size: 15px; } .muted { color: #57606a; } .empty { color: #57606a; font-style: italic; }
td.path { min-width: 240px; }
.path { color: #57606a; font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.error { color: #b42318; } .note { background: #fff8c5; padding: 6px 10px; border-radius: 6px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border-bottom: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.paper { color: #57606a; }
.links { white-space: nowrap; }
td.delta-good { color: #1a7f37; background: #dafbe1; font-weight: 600; }
td.delta-bad { color: #b42318; background: #ffebe9; font-weight: 600; }
td.delta-zero { color: #57606a; }
tr.front td { background: #fff8c5; }
.scroll { overflow-x: auto; }
.filters { display: flex; gap: 14px; align-items: center; background: #f6f8fa; padding: 8px 12px; border-radius: 6px;
           margin: 10px 0; flex-wrap: wrap; }
.filters select { margin-left: 4px; max-width: 260px; }
.filters .shown { color: #57606a; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; margin: 12px 0; }
.plot { width: 100%; height: 420px; border: 1px solid #d0d7de; border-radius: 6px; }
.plot-error { height: auto; color: #b42318; }
details { margin: 10px 0; } pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
table.kv td { font-family: ui-monospace, monospace; font-size: 12px; }
"""

JS = """// lowbit report: draw the inlined plotly figures; filter rows by task, method and model.
(function () {
  "use strict";

  function drawPlots() {
    document.querySelectorAll("div.plot").forEach(function (el) {
      if (typeof Plotly === "undefined") {
        el.textContent = "plotly.min.js did not load: the report's assets/ folder is missing";
        el.classList.add("plot-error");
        return;
      }
      var figure = JSON.parse(document.getElementById(el.dataset.figure).textContent);
      Plotly.newPlot(el, figure.data, figure.layout, {responsive: true, displaylogo: false});
      el.on("plotly_click", function (event) {  // a point that carries a page (customdata) opens it
        var point = event.points && event.points[0];
        if (point && typeof point.customdata === "string" && point.customdata) { window.location.href = point.customdata; }
      });
    });
  }

  function applyFilters(form) {
    var wanted = {};
    form.querySelectorAll("select.filter").forEach(function (s) { wanted[s.dataset.key] = s.value; });
    var items = document.querySelectorAll("[data-filterable]");
    var shown = 0;
    items.forEach(function (el) {
      var match = Object.keys(wanted).every(function (key) {
        return !wanted[key] || (el.dataset[key] || "").split("|").indexOf(wanted[key]) >= 0;
      });
      el.classList.toggle("filtered-out", !match);
      el.style.display = match ? "" : "none";
      if (match) { shown += 1; }
    });
    var label = form.querySelector(".shown");
    if (label) { label.textContent = shown + " of " + items.length + " shown"; }
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawPlots();
    document.querySelectorAll("form.filters").forEach(function (form) {
      form.querySelectorAll("select.filter").forEach(function (s) {
        s.addEventListener("change", function () { applyFilters(form); });
      });
      applyFilters(form);
    });
  });
})();
"""
