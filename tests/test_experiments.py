"""Every experiment and every method-group option composes and trains one step on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import CONF, TINY_RUN
from lowbit.algorithms import METHOD_CARDS, METHOD_GROUPS
from lowbit.pipeline import run

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
OPTIONS = sorted(f"{g}/{p.stem}" for g in METHOD_GROUPS for p in (CONF / g).glob("*.yaml") if not p.stem.startswith("_"))


def test_experiments_exist():
    assert {"demo_sst2", "ternarybert_sst2", "ternarybert_mnli", "directq_sst2"} <= set(EXPERIMENTS)


def test_experiment_not_in_defaults_list():
    text = (CONF / "train.yaml").read_text()
    defaults = text.split("defaults:")[1].split("\n\n")[0]
    assert "- experiment" not in defaults and "- hparams_search" not in defaults


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name, make_cfg):
    cfg = make_cfg([f"+experiment={name}"])
    assert cfg.task_name == name
    for group in ("model", "data", "quantizer", "bit_assignment", "trainer"):
        assert "_target_" in cfg[group], group
    instantiate(cfg.quantizer), instantiate(cfg.bit_assignment)  # validates values


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_fast_dev_run(name, make_cfg):
    cfg = make_cfg([f"+experiment={name}", *TINY_RUN])
    value = run(cfg)
    assert isinstance(value, float) and -1.0 <= value <= 1.0  # accuracy, F1, MCC or Pearson
    summary = Path(cfg.paths.output_dir, "summary.json")
    assert summary.exists() and "model/size_bits" in summary.read_text()


def test_every_method_option_has_a_card():
    missing = [opt for opt in OPTIONS if opt not in METHOD_CARDS]
    assert not missing, f"options without a method card (lowbit.algorithms.card): {missing}"


@pytest.mark.parametrize("option", OPTIONS)
def test_method_option_fast_dev_run(option, make_cfg):
    card = METHOD_CARDS.get(option)
    cfg = make_cfg([*TINY_RUN, f"{card.group}={card.option}", *card.test_overrides])
    assert -1.0 <= run(cfg) <= 1.0


def test_mnli_reports_matched_and_mismatched(make_cfg):
    cfg = make_cfg(["+experiment=ternarybert_mnli", *TINY_RUN])
    run(cfg)
    text = Path(cfg.paths.output_dir, "summary.json").read_text()
    assert '"val/acc"' in text and '"val_mm/acc"' in text
