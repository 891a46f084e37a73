"""Every notebook under notebooks/ executes (nbclient, a real Jupyter kernel) on runs the test makes with the tiny
model, and each test checks what the notebook showed, so a notebook that breaks, or runs but shows nothing, fails."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_RUN

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.timeout(600)

NOTEBOOK_DIR = ROOT / "notebooks"
#: the notebooks a test below executes; a new notebook needs its own runs and checks here
TESTED = {"compare_runs.ipynb", "inspect_sweep.ipynb", "method_deep_dive.ipynb"}
#: every parameter the notebooks read from the environment (unset unless a test sets it)
NOTEBOOK_ENV = ("LOWBIT_LOG_DIR", "LOWBIT_SWEEP_STORAGE", "LOWBIT_SWEEP_STUDY", "LOWBIT_RUN_DIR", "LOWBIT_HESSIAN_JSON")
PLOTLY = "application/vnd.plotly.v1+json"


def save_hydra_config(cfg) -> Path:
    """``<run>/.hydra/config.yaml``, as train.py leaves it (``train`` called in-process does not write it)."""
    from omegaconf import OmegaConf

    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    return run_dir


def tiny_run(overrides: list[str], tmp: Path) -> Path:
    """One fast_dev_run of the tiny model; outputs in ``tmp/out``."""
    from conftest import compose_train

    from lowbit.pipeline import train

    cfg = compose_train([*TINY_RUN, *overrides], tmp)
    train(cfg)
    return save_hydra_config(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two finished tiny runs (float and ternary) under one logs directory, as train.py leaves them."""
    logs = tmp_path_factory.mktemp("logs")
    for name, overrides in {"fp32": ["quantizer=none"], "ternary": ["quantizer=ternary_twn", "bit_assignment.bits=2"]}.items():
        tiny_run(["+experiment=demo_sst2", *overrides], logs / name)  # outputs: logs/<name>/out
    return logs


SWEEP_TRIALS = 4
SWEEP_STUDY = "demo_sst2_bits_lr"  # hparams_search=bits_lr names it <task_name>_bits_lr


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real multi-objective sweep (train.py -m +hparams_search=bits_lr, the tiny model, 2 steps a trial): its study in
    SQLite at the default place, <logs>/sweeps/<study>/optuna.db. Returns the logs directory."""
    tmp = tmp_path_factory.mktemp("sweep")
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "+experiment=demo_sst2", "+hparams_search=bits_lr",
           "model=tiny", "logger=none", "callbacks=none", "trainer.max_steps=2", "trainer.accelerator=cpu",
           "trainer.enable_progress_bar=false", "data.max_train_samples=32", "data.max_eval_samples=32",
           "data.batch_size=8", f"paths.log_dir={tmp}/logs", f"paths.cache_dir={tmp}/cache",
           f"hydra.sweeper.n_trials={SWEEP_TRIALS}"]
    result = subprocess.run(cmd, check=False, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"},
                            capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (tmp / "logs" / "sweeps" / SWEEP_STUDY / "optuna.db").is_file()
    return tmp / "logs"


QBERT_LAYERS = 4


@pytest.fixture(scope="module")
def qbert_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A Q-BERT-MP run as experiments/qbert makes one: the spectrum of the baseline (``lowbit.hessian``, here of the
    tiny model as built: there is no trained checkpoint in a fast_dev_run), then ``bit_assignment=hessian`` from it;
    and, newer, a uniform Q-BERT run the notebook must pass over. Returns (logs dir, the Q-BERT-MP run dir)."""
    import torch

    from lowbit.hessian.analysis import HessianOptions, analyse

    logs = tmp_path_factory.mktemp("qbert_logs")
    model = ["model=tiny", f"model.config.num_hidden_layers={QBERT_LAYERS}"]
    spectrum = logs / "qbert_sst2" / "baseline" / "checkpoints" / "best.hessian.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny HVPs: thread hand-offs cost more than they save on a loaded machine
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LOWBIT_CACHE_DIR", str(logs / "cache"))
            analyse([*model, "data=sst2", "data.max_train_samples=32", "data.batch_size=8"],
                    HessianOptions(fraction=0.5, method="lanczos", blocks=["layer", "module"], max_iter=10,
                                   wandb_mode="disabled", out=str(spectrum)), logs / "hessian")
        mixed = tiny_run([*model, "+experiment=qbert_sst2", "bit_assignment=hessian",
                          f"bit_assignment.sensitivity_file={spectrum}", "bit_assignment.bit_choices=[2,3]",
                          "bit_assignment.budget=2.5"], logs / "qbert_sst2" / "qbert_mp_w23")
        tiny_run([*model, "+experiment=qbert_sst2", "bit_assignment.bits=2"], logs / "qbert_sst2" / "qbert_w2")
    finally:
        torch.set_num_threads(threads)
    return logs, mixed


def execute(name: str, monkeypatch, **env: str) -> nbformat.NotebookNode:
    """Run notebooks/<name> top to bottom in a fresh kernel, its parameters in the environment; the executed notebook."""
    for var in NOTEBOOK_ENV:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    return nb


def outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def shown_text(nb) -> str:
    """What the notebook printed or displayed as text (streams, text/plain of results and displays)."""
    return "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for o in outputs(nb))


def figures(nb) -> list[dict]:
    """The plotly figures the notebook showed (their JSON)."""
    return [o["data"][PLOTLY] for o in outputs(nb) if PLOTLY in o.get("data", {})]


def array(values) -> list:
    """A figure's data array: a plain list, or plotly's typed-array encoding ``{dtype, bdata}``."""
    if isinstance(values, dict) and "bdata" in values:
        import numpy as np

        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def title(fig: dict) -> str:
    return fig["layout"]["title"]["text"]


def test_every_notebook_has_a_test():
    assert {p.name for p in NOTEBOOK_DIR.glob("*.ipynb")} == TESTED


@pytest.mark.parametrize("name", sorted(TESTED))
def test_notebooks_are_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    assert not any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def test_compare_runs(runs, monkeypatch):
    nb = execute("compare_runs.ipynb", monkeypatch, LOWBIT_LOG_DIR=str(runs))
    shown = shown_text(nb)
    assert "fp32" in shown and "ternary" in shown, shown[:500]  # both runs reached the notebook's table
    summaries = [json.loads(f.read_text()) for f in sorted(runs.glob("**/summary.json"))]
    points = sorted((s["model/size_mb"], s["val/acc"]) for s in summaries)
    (fig,) = figures(nb)
    assert title(fig) == f"val/acc vs size ({len(points)} runs, {title(fig).split(', ')[1]}"
    traces = {t["name"]: sorted(zip(array(t["x"]), array(t["y"]))) for t in fig["data"]}
    assert traces["runs"] == points
    front = [p for p in points  # by the definition, not through lowbit's pareto_front
             if not any(q[1] >= p[1] and q[0] <= p[0] and q != p for q in points)]
    assert traces["Pareto front"] == front and len(front) >= 1


@pytest.mark.slow  # the sweep fixture: 4 trials through train.py -m, ~20 s
def test_inspect_sweep_finds_the_newest_sweep_and_shows_it(sweep, monkeypatch):
    import optuna

    db = sweep / "sweeps" / SWEEP_STUDY / "optuna.db"
    study = optuna.load_study(study_name=SWEEP_STUDY, storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * SWEEP_TRIALS
    front = len(study.best_trials)

    nb = execute("inspect_sweep.ipynb", monkeypatch, LOWBIT_LOG_DIR=str(sweep))  # found, not named
    shown = shown_text(nb)
    assert f"study '{SWEEP_STUDY}' in sqlite:///{db.resolve()}" in shown, shown[:1000]
    assert f"{SWEEP_TRIALS} trials: {SWEEP_TRIALS} COMPLETE" in shown
    assert "objectives: maximize val/acc, minimize model/size_bits" in shown
    for t in study.trials:  # every trial is a row of the table (its run directory is a column)
        assert t.user_attrs["lowbit_output_dir"] in shown, t.number
    for param in ("bit_assignment.bits", "bit_assignment.word_embedding", "optim.lr"):
        assert param in shown
    assert f"Pareto front: {front} of {SWEEP_TRIALS} COMPLETE trials" in shown

    figs = {title(f): f for f in figures(nb)}
    for i, objective in enumerate(["val/acc", "model/size_bits"]):
        history = figs.pop(f"Optimization history: {objective}")
        assert sorted(array(history["data"][0]["y"])) == sorted(t.values[i] for t in study.trials)
    pareto = figs.pop(f"Pareto front ({front} of {SWEEP_TRIALS} COMPLETE trials)")
    assert sum(len(array(trace["x"])) for trace in pareto["data"]) == SWEEP_TRIALS  # front and the others
    # the sizes differ between trials (bits are swept): their importances are computed and plotted
    importances = figs.pop(f"Parameter importances (fANOVA, {SWEEP_TRIALS} COMPLETE trials)")
    size = next(trace for trace in importances["data"] if trace["name"] == "model/size_bits")
    assert sorted(array(size["y"])) == sorted(study.trials[0].params)
    assert sum(array(size["x"])) == pytest.approx(1.0)
    assert not figs, list(figs)
    assert "4 plots: 2 optimization history, 1 parameter importances, 1 Pareto front" in shown


@pytest.mark.slow  # the sweep fixture: 4 trials through train.py -m, ~20 s
def test_inspect_sweep_storage_and_study_from_the_environment(sweep, monkeypatch):
    db = sweep / "sweeps" / SWEEP_STUDY / "optuna.db"
    shown = shown_text(execute("inspect_sweep.ipynb", monkeypatch, LOWBIT_LOG_DIR=str(sweep / "nowhere"),
                               LOWBIT_SWEEP_STORAGE=f"sqlite:///{db}", LOWBIT_SWEEP_STUDY=SWEEP_STUDY))
    assert f"study '{SWEEP_STUDY}' in sqlite:///{db}" in shown and f"{SWEEP_TRIALS} COMPLETE" in shown


def test_method_deep_dive_shows_the_spectrum_and_the_bits(qbert_runs, monkeypatch):
    logs, run_dir = qbert_runs
    summary = json.loads((run_dir / "summary.json").read_text())
    bits = [int(b) for b in summary["bit_assignment/layer_bits"].split(",")]
    assert len(bits) == QBERT_LAYERS and sorted(set(bits)) == [2, 3]  # mixed: 2/3 bits at an average of 2.5
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    spectrum = json.loads(Path(cfg["bit_assignment"]["sensitivity_file"]).read_text())
    sensitivity = {b["layer"]: b["sensitivity"] for b in spectrum["blocks"].values() if b["kind"] == "layer"}

    nb = execute("method_deep_dive.ipynb", monkeypatch, LOWBIT_LOG_DIR=str(logs))  # found, not named
    shown = shown_text(nb)
    assert f"run: {run_dir}" in shown, shown[:1000]  # the Hessian run, not the newer uniform one
    assert f"{QBERT_LAYERS} encoder layers, ranked by sensitivity; bit choices [2, 3]: average_bits 2.5 " in shown
    assert "recomputed assignment matches the run" in shown

    layers_fig, modules_fig = figures(nb)
    plotted_bits, plotted_sensitivity = {}, {}
    for trace in layers_fig["data"]:
        layers = [int(x.split()[-1]) for x in array(trace["x"])]
        values = dict(zip(layers, array(trace["y"])))
        if trace["yaxis"] == "y2":  # the bits subplot
            plotted_bits.update(values)
        else:
            assert {bits[i] for i in layers} == {int(trace["name"].split()[0])}  # coloured by the layer's bits
            plotted_sensitivity.update(values)
    assert [plotted_bits[i] for i in range(QBERT_LAYERS)] == bits
    assert [plotted_sensitivity[i] for i in range(QBERT_LAYERS)] == pytest.approx([sensitivity[i] for i in range(QBERT_LAYERS)])
    assert {trace["name"] for trace in modules_fig["data"]} == {"attention", "ffn"}
    assert sum(len(array(trace["y"])) for trace in modules_fig["data"]) == 2 * QBERT_LAYERS
    assert f"{2 * QBERT_LAYERS} non-layer blocks: ['module']" in shown


@pytest.mark.parametrize("name, error", [
    ("inspect_sweep.ipynb", "FileNotFoundError: no sweep found: no optuna.db under"),
    ("method_deep_dive.ipynb", "FileNotFoundError: no Q-BERT-MP run (bit_assignment=hessian"),
])
def test_notebook_says_what_it_did_not_find(name, error, runs, monkeypatch):
    """Logs with runs, but no sweep and no Hessian-assigned run: one clear error, not an empty notebook."""
    with pytest.raises(nbclient.exceptions.CellExecutionError) as info:
        execute(name, monkeypatch, LOWBIT_LOG_DIR=str(runs))
    assert f"{info.value.ename}: {info.value.evalue}".startswith(error), str(info.value)[-1000:]
