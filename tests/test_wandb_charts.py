"""W&B a researcher can browse: tables with paper and Δ columns and their charts, method charts in train runs,
sweeps grouped by study, all checked in the offline runs' ``.wandb`` files."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, TINY_RUN
from wandb_records import logged_table, offline_run_files, run_log

from lowbit.tables import TableRow, TableSpec, run_table
from lowbit.wandb_charts import (
    ChartsAtTrainStart,
    SparsityCurve,
    bar_key,
    groups_key,
    pareto_front,
    pareto_key,
    scatter_key,
    sweep_run_overrides,
    with_deltas,
)


# -- Pareto front ------------------------------------------------------------------------------
def _on_front_by_definition(points, i) -> bool:
    """No other point has ≥ accuracy and ≤ size with one strict; a point missing a value is never on it."""
    def complete(p):
        return all(v is not None and not math.isnan(v) for v in p)

    a, s = points[i] if complete(points[i]) else (None, None)
    if a is None:
        return False
    return not any(complete(q) and q[0] >= a and q[1] <= s and (q[0] > a or q[1] < s)
                   for j, q in enumerate(points) if j != i)


def test_pareto_front_matches_its_definition_on_random_points():
    rng = random.Random(0)
    for _ in range(300):
        # few distinct values: ties in accuracy, in size and whole duplicate points are common
        points = [(rng.choice([None, math.nan] + [rng.randint(0, 5)] * 6), rng.choice([None] + [rng.randint(0, 5)] * 6))
                  for _ in range(rng.randint(0, 12))]
        assert pareto_front(points) == [i for i in range(len(points)) if _on_front_by_definition(points, i)], points


def test_pareto_front_ties_and_missing_values():
    # equal points: neither dominates the other; a better-in-one point with a tie in the other dominates
    assert pareto_front([(0.9, 10.0), (0.9, 10.0), (0.9, 12.0), (0.8, 10.0), (None, 1.0), (1.0, None)]) == [0, 1]
    assert pareto_front([(0.5, 1.0), (0.9, 3.0), (0.7, 2.0), (0.6, 2.5)]) == [0, 1, 2]
    assert pareto_front([]) == []


# -- Δ columns -----------------------------------------------------------------------------------
def test_deltas_match_each_metric_to_the_papers_column_in_the_tables_units():
    spec = TableSpec(name="t", title="t", metrics=["val/acc", "val/f1", "early_exit/saving@1"], rows=[])
    results = [
        # ours in percent; SST-2 is the paper's accuracy column; the metric's own name holds a fraction
        {"row": "a", "ours val/acc": 91.5, "ours val/f1": None, "ours early_exit/saving@1": 50.0,
         "paper SST-2": 93.0, "paper early_exit/saving@1": 0.54, "size MB": 10.0, "paper size MB": 28.0},
        # MRPC is the paper's F1 (not accuracy); no paper accuracy: no Δ accuracy
        {"row": "b", "ours val/acc": 80.0, "ours val/f1": 85.25, "ours early_exit/saving@1": None,
         "paper MRPC": 90.9, "size MB": 12.5},
    ]
    a, b = with_deltas(spec, results)
    assert a["Δ val/acc"] == pytest.approx(-1.5) and a["Δ val/f1"] is None
    assert a["Δ early_exit/saving@1"] == pytest.approx(-4.0) and a["Δ size MB"] == pytest.approx(-18.0)
    assert b["Δ val/acc"] is None and b["Δ val/f1"] == pytest.approx(-5.65) and b["Δ size MB"] is None
    assert {k: v for k, v in a.items() if not k.startswith("Δ")} == results[0]  # the paper columns stay
    # no paper value anywhere: no Δ column
    assert not any(k.startswith("Δ") for k in with_deltas(spec, [{"row": "c", "ours val/acc": 1.0}])[0])


# -- a tiny table, logged offline ------------------------------------------------------------------
def _visualized(log) -> dict[str, str]:
    """Custom chart key -> its Vega spec (``_wandb.visualize`` of the run config)."""
    return {k: v["panel_config"]["panelDefId"] for k, v in log.config.get("_wandb", {}).get("visualize", {}).items()}


def _the_run(directory: Path):
    (path,) = offline_run_files(directory)
    return path, run_log(path)


def test_table_runs_are_grouped_and_the_table_run_carries_deltas_and_charts(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    # two real steps (fast_dev_run switches loggers off), W&B offline in every row
    base = [o for o in TINY_RUN if not o.startswith(("logger=", "trainer.fast_dev_run"))]
    base += ["trainer.max_steps=2", "logger.wandb.mode=offline"]
    groupwise = ["quantizer=groupwise", "quantizer.groups_per_head=null", "bit_assignment.bits=2"]
    spec = TableSpec(name="chart_table", title="charts", metrics=["val/acc"], base_overrides=base, rows=[
        TableRow("fp32", ["quantizer=none"], {"acc": 90.0}),
        TableRow("g1", [*groupwise, "quantizer.n_groups=1"], {"acc": 80.0}),
        TableRow("g4", [*groupwise, "quantizer.n_groups=4", "pruning=magnitude", "pruning.final_sparsity=0.5",
                        "pruning.initial_warmup=0", "pruning.final_warmup=0"], {"acc": None}),
    ])
    out = tmp_path / "t"
    results = run_table(spec, [], out, wandb_mode="offline")

    for row in ("fp32", "g1", "g4"):
        _, log = _the_run(out / row)
        assert (log.run.run_group, log.run.job_type) == ("chart_table", row)

    table_file, log = _the_run(out / "wandb")  # the rows' runs are in their own directories
    assert (log.run.run_group, log.run.job_type) == ("chart_table", "table")
    # the table: the paper column and Δ = ours − paper where the paper has a number
    (table_value,) = log.logged("chart_table")
    table = logged_table(table_file, table_value)
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [r["paper acc"] for r in rows] == [90.0, 80.0, None]
    assert [r["Δ val/acc"] for r in rows[:2]] == [pytest.approx(result["ours val/acc"] - paper, abs=1e-3)
                                                  for result, paper in zip(results, (90.0, 80.0))]
    assert rows[2]["Δ val/acc"] is None

    assert _visualized(log) == {bar_key("chart_table", "val/acc"): "wandb/bar/v0",
                                scatter_key("chart_table", "val/acc"): "wandb/scatter/v0",
                                groups_key("chart_table", "val/acc"): "wandb/line/v0"}
    # bars: ours for every row, the paper where it has a number
    bars = logged_table(table_file, log.logged(bar_key("chart_table", "val/acc") + "_table")[0])
    assert [b[2] for b in bars["data"]] == ["fp32 (ours)", "fp32 (paper)", "g1 (ours)", "g1 (paper)", "g4 (ours)"]
    # the scatter's rows carry the front as its definition has it; the Plotly figure draws it
    scatter = logged_table(table_file, log.logged(scatter_key("chart_table", "val/acc") + "_table")[0])
    points = [(r[3], r[2]) for r in scatter["data"]]
    assert [r[4] for r in scatter["data"]] == [i in pareto_front(points) for i in range(len(points))]
    assert [r[2] for r in scatter["data"]] == [r["size MB"] for r in results]
    (figure,) = log.logged(pareto_key("chart_table", "val/acc"))
    assert figure["_type"] == "plotly-file"
    plotly = json.loads((table_file.parent / "files" / figure["path"]).read_text())
    assert [t["name"] for t in plotly["data"]] == ["all (sst2)", "Pareto front (sst2)"]  # one series per task
    front_trace = plotly["data"][1]
    assert sorted(front_trace["text"]) == sorted(r[0] for r in scatter["data"] if r[4])
    # accuracy vs ranges per matrix: the group-wise rows only, one line per bit-width
    line = logged_table(table_file, log.logged(groups_key("chart_table", "val/acc") + "_table")[0])
    assert [(r[0], r[2], r[3]) for r in line["data"]] == [(1, "2-bit", "g1"), (4, "2-bit", "g4")]

    # the pruned row's own run: sparsity per encoder layer and in total, from the first step to the last
    g4_file, g4 = _the_run(out / "g4")
    assert _visualized(g4) == {SparsityCurve.KEY: "wandb/lineseries/v0"}
    curve = logged_table(g4_file, g4.logged(SparsityCurve.KEY + "_table")[0])
    series = {}
    for key, step, value in ([dict(zip(curve["columns"], r))[c] for c in ("lineKey", "step", "lineVal")]
                             for r in curve["data"]):
        series.setdefault(key, []).append((step, value))
    assert set(series) == {"layer 0", "layer 1", "encoder total"}
    assert [s for s, _ in series["encoder total"]] == [0, 1, 2]
    assert series["encoder total"][-1][1] == pytest.approx(0.5, abs=0.01)
    summary = json.loads((out / "g4" / "summary.json").read_text())
    assert series["encoder total"][-1][1] == pytest.approx(summary["pruning/sparsity"])


# -- method charts through a run's loggers ---------------------------------------------------------
def _offline_logger(tmp_path: Path):
    from lowbit.tracking import wandb_logger

    return wandb_logger(name="charts", save_dir=str(tmp_path / "run"), mode="offline")


def test_hessian_bits_log_bits_and_sensitivity_per_layer_to_wandb_only(tmp_path):
    from lowbit.algorithms.qbert import HessianBits

    blocks = {f"layer.{i}": {"kind": "layer", "layer": i, "numel": 10, "mean": m, "std": 0.5, "sensitivity": m + 0.5,
                             "summed": None} for i, m in enumerate([3.0, 1.0, 2.0])}
    hessian_file = tmp_path / "ckpt.hessian.json"
    hessian_file.write_text(json.dumps({"blocks": blocks}))
    method = HessianBits(sensitivity_file=str(hessian_file), bit_choices=[2, 4], budget=3.0)
    assert method.layer_bits == [4, 2, 2]  # the most sensitive layer first, within 3 bits on average
    (callback,) = method.callbacks()

    logger = _offline_logger(tmp_path)
    callback.on_train_start(SimpleNamespace(loggers=[logger], is_global_zero=True, global_step=0), None)
    logger.experiment.finish()
    path, log = _the_run(tmp_path / "run")
    assert _visualized(log) == {"bit_assignment/bits per layer": "wandb/bar/v0",
                                "bit_assignment/sensitivity per layer": "wandb/bar/v0",
                                "hessian/layer_top_eigenvalue": "wandb/bar/v0",
                                "hessian/layer_sensitivity": "wandb/bar/v0"}  # no data-summed values: no bar
    bits = logged_table(path, log.logged("bit_assignment/bits per layer_table")[0])
    assert bits["data"] == [["layer 0", 4, 3.5], ["layer 1", 2, 1.5], ["layer 2", 2, 2.5]]

    # no W&B logger (CSV, none): nothing is built or logged
    built = []
    ChartsAtTrainStart(lambda: built.append(1) or {}).on_train_start(
        SimpleNamespace(loggers=[], is_global_zero=True, global_step=0), None)
    assert built == []


# -- sweeps ---------------------------------------------------------------------------------------
def test_sweep_run_overrides_parse_and_keep_a_group_the_sweep_sets():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    config = OmegaConf.create({"task_name": "demo", "logger": {"wandb": {"name": "${task_name}", "group": None,
                                                                          "job_type": None}}})
    overrides = sweep_run_overrides(config, "my study's, 1", 7, {"optim.lr": "0.001", "+quantizer": "uniform"})
    parsed = {o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed == {"++sweep.study": "my study's, 1", "++sweep.trial": 7, "++sweep.params.optim.lr": 0.001,
                      "++sweep.params.quantizer": "uniform", "logger.wandb.group": "my study's, 1",
                      "logger.wandb.job_type": "trial", "logger.wandb.name": "demo-trial7"}
    config.logger.wandb.group = "mine"
    assert not any(o.startswith("logger.wandb.group") for o in sweep_run_overrides(config, "s", 0, {}))
    assert sweep_run_overrides(OmegaConf.create({"logger": {"csv": {}}}), "s", 0, {"a": "1"}) == []


@pytest.mark.parametrize("directions", [("maximize", "minimize"), ("minimize", "maximize"), ("minimize", "minimize")])
def test_a_sweeps_front_follows_each_objectives_direction(directions):
    from lowbit.wandb_charts import SweepTrial, sweep_charts

    values = [(0.8, 3.0), (0.9, 5.0), (0.7, 1.0), (0.8, 4.0), (0.6, 6.0)]
    trials = [SweepTrial(10 + i, {"lr": 0.1 * i}, list(v)) for i, v in enumerate(values)]
    charts = sweep_charts("s", trials, ["acc", "size"], list(directions))
    data = charts["s/trials"].data
    assert [row[:2] for row in data] == [[t.number, t.params["lr"]] for t in trials]

    def better_or_equal(a, b, direction):
        return a >= b if direction == "maximize" else a <= b

    def beaten(i):  # another trial at least as good in both objectives and better in one
        return any(all(better_or_equal(values[j][k], values[i][k], directions[k]) for k in (0, 1))
                   and values[j] != values[i] for j in range(len(values)))

    assert [row[-1] for row in data] == [not beaten(i) for i in range(len(values))]
    single = [SweepTrial(t.number, t.params, t.values[:1]) for t in trials]
    assert sweep_charts("s", single, ["acc"], ["maximize"]).keys() == {"s/trials", "s/acc by trial"}


def test_sweep_trials_share_the_study_group_with_number_and_params_in_config(tmp_path):
    """A real two-trial multi-objective sweep through train.py (tiny model, W&B offline)."""
    import os

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "+experiment=demo_sst2", "+hparams_search=bits_lr",
           "model=tiny", "logger=wandb", "callbacks=none", "trainer.max_steps=2", "trainer.accelerator=cpu",
           "trainer.enable_progress_bar=false", "data.max_train_samples=32", "data.max_eval_samples=32",
           "data.batch_size=8", f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/cache",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=chart_sweep"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep_dir = tmp_path / "logs" / "sweeps" / "chart_sweep"
    with sqlite3.connect(sweep_dir / "optuna.db") as db:
        params = {}
        for number, name, value in db.execute(
                "select t.number, p.param_name, p.param_value from trials t join trial_params p using (trial_id)"):
            params.setdefault(number, {})[name] = value
    assert sorted(params) == [0, 1]

    for number, trial_params in params.items():
        _, log = _the_run(sweep_dir / str(number))
        assert (log.run.run_group, log.run.job_type, log.run.display_name) == (
            "chart_sweep", "trial", f"demo_sst2-trial{number}")
        sweep = log.config["sweep"]
        assert (sweep["study"], sweep["trial"]) == ("chart_sweep", number)
        flat = {"bit_assignment.bits": sweep["params"]["bit_assignment"]["bits"],
                "bit_assignment.word_embedding": sweep["params"]["bit_assignment"]["word_embedding"],
                "optim.lr": sweep["params"]["optim"]["lr"]}
        # optuna stores a categorical as its index in the choices (2, 4, 8), a float as itself
        assert flat["optim.lr"] == pytest.approx(trial_params["optim.lr"])
        assert [2, 4, 8].index(flat["bit_assignment.bits"]) == trial_params["bit_assignment.bits"]

    # the study's own run: every trial, its objectives and the Pareto front of (max accuracy, min size)
    path, log = _the_run(sweep_dir / "wandb")
    assert (log.run.run_group, log.run.job_type) == ("chart_sweep", "sweep")
    trials = logged_table(path, log.logged("chart_sweep/trials")[0])
    rows = [dict(zip(trials["columns"], r)) for r in trials["data"]]
    assert sorted(r["trial"] for r in rows) == [0, 1]
    points = [(r["val/acc"], r["model/size_bits"]) for r in rows]
    assert [r["on Pareto front"] for r in rows] == [i in pareto_front(points) for i in range(len(rows))]
    assert _visualized(log) == {"chart_sweep/val/acc vs model/size_bits": "wandb/scatter/v0"}
    assert log.logged("chart_sweep/val/acc vs model/size_bits, Pareto front")[0]["_type"] == "plotly-file"
