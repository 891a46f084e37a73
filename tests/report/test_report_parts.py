"""The report's parts without a browser: ours-vs-paper pairing and Δ, and the committed results
under experiments/ (the browser tests and the tiny logs are test_report.py's)."""

from __future__ import annotations

import pytest
from conftest import ROOT
from wandb_records import finished_records

from lowbit.report import build_report, compare
from lowbit.report.discover import is_table_csv


def test_each_row_pairs_our_metric_with_the_one_paper_column_it_has():
    """I-BERT Table 2 style: one task per row, the paper's number under the task's column."""
    columns = ["row", "paper_row", "ours val/acc", "ours val/f1", "size MB", "paper SST-2", "paper MRPC",
               "paper MNLI-m", "paper source"]
    (acc, f1, size) = compare.comparisons(columns)
    assert (acc.metric, acc.paper_columns) == ("val/acc", ["paper SST-2", "paper MNLI-m"])
    assert (f1.paper_columns, size.paper_columns) == (["paper MRPC"], [])
    sst2 = {"ours val/acc": 92.0, "ours val/f1": None, "paper SST-2": 96.0, "paper MRPC": None, "paper MNLI-m": None}
    mrpc = {"ours val/acc": 80.0, "ours val/f1": 88.0, "paper SST-2": None, "paper MRPC": 91.0, "paper MNLI-m": None}
    assert compare.paper_value(sst2, acc) == ("paper SST-2", 96.0) and compare.delta(sst2, acc) == -4.0
    assert compare.paper_value(mrpc, acc) == (None, None) and compare.delta(mrpc, acc) is None
    assert compare.delta(mrpc, f1) == -3.0
    both = {**sst2, "paper MNLI-m": 87.0}  # two candidates: ambiguous, not compared
    assert compare.paper_value(both, acc) == (None, None)


def test_a_paper_column_named_after_the_metric_is_a_fraction_shown_as_percent():
    columns = ["row", "ours early_exit/saving@1", "ours L2", "paper early_exit/saving@1", "paper L2"]
    saving, l2 = compare.comparisons(columns, shows_percent=lambda m: m.startswith("early_exit"))
    row = {"ours early_exit/saving@1": 63.47, "paper early_exit/saving@1": 0.54, "ours L2": 0.0118, "paper L2": 0.012}
    assert compare.paper_value(row, saving) == ("paper early_exit/saving@1", 54.0)
    assert compare.delta(row, saving) == pytest.approx(9.47)
    assert compare.paper_value(row, l2) == ("paper L2", 0.012)  # not a percentage: as it is


def test_delta_colour_is_green_when_ours_is_better():
    acc, size, l2 = compare.comparisons(["ours val/acc", "size MB", "ours L2", "paper acc", "paper size MB", "paper L2"])
    assert compare.delta_class(1.5, acc) == "delta-good" and compare.delta_class(-1.5, acc) == "delta-bad"
    assert compare.delta_class(-10.0, size) == "delta-good" and compare.delta_class(3.0, size) == "delta-bad"
    assert compare.delta_class(-0.001, l2) == "delta-good"  # an approximation error: smaller is better
    assert compare.delta_class(0.0, acc) == "delta-zero" and compare.delta_class(None, acc) == ""


def test_committed_results_each_get_a_page(tmp_path):
    """experiments/*/results: every table CSV gets a table page, every Hessian spectrum a page (no run dirs there)."""
    roots = sorted(p for p in (ROOT / "experiments").glob("*/results") if p.is_dir())
    csvs = sorted(p for r in roots for p in r.glob("*.csv") if is_table_csv(p))
    assert csvs, "no committed table CSV under experiments/*/results"
    index = build_report(roots, tmp_path / "site")
    pages = list((tmp_path / "site" / "tables").glob("*.html"))
    assert len(pages) == len(csvs)
    html = index.read_text()
    assert all(f">{p.stem}</a>" in html for p in csvs)
    for page in pages:  # ours beside the paper, Δ where both exist (every committed table has a paper column)
        text = page.read_text()
        assert "<table class=\"results\"" in text and "paper" in text


def test_wandb_history_reads_every_logged_step_across_blocks(tmp_path, monkeypatch):
    """A W&B offline run file of several 32 KiB blocks (records split over blocks) read back step by step."""
    wandb = pytest.importorskip("wandb")
    from lowbit.report.curves import to_curves, wandb_history

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="lowbit-test", dir=str(tmp_path), mode="offline")
    for step in range(1500):
        run.log({"train/loss": 1 / (step + 1), "trainer/global_step": step, "note": "padding " * 4})
    run.finish()
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    finished_records(path)  # finish() can return before W&B's service wrote the tail (CI once read 22 steps short)
    assert path.stat().st_size > 3 * 32768
    curves = to_curves(wandb_history(path))
    assert curves["train/loss"] == [(float(s), 1 / (s + 1)) for s in range(1500)]
    assert "note" not in curves  # not a number: not a curve


def test_parameter_importance_says_why_when_it_cannot_be_computed():
    import optuna

    from lowbit.report.site import parameter_importances

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(params={"bits": 2}, values=[0.5, 10.0],
                                              distributions={"bits": optuna.distributions.IntDistribution(2, 8)}))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert parameter_importances(study, complete, ["acc", "size"]) == (
        {}, ["No parameter importance: it needs at least 2 completed trials with parameters, this study has 1."])
    study.add_trial(optuna.trial.create_trial(params={"bits": 2}, values=[0.6, 10.0],
                                              distributions={"bits": optuna.distributions.IntDistribution(2, 8)}))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert parameter_importances(study, complete, ["acc", "size"])[1] == [
        "No parameter importance: every completed trial has the same parameter values."]
    for bits, acc in ((4, 0.7), (8, 0.9)):
        study.add_trial(optuna.trial.create_trial(params={"bits": bits}, values=[acc, bits * 5.0],
                                                  distributions={"bits": optuna.distributions.IntDistribution(2, 8)}))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    importances, why = parameter_importances(study, complete, ["acc", "size"])
    assert why == [] and importances == {"acc": {"bits": 1.0}, "size": {"bits": 1.0}}
