"""Every experiment and every method-group option composes and trains one step on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONF, TINY_RUN
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lowbit.algorithms import METHOD_CARDS, METHOD_GROUPS
from lowbit.algorithms.effects import EffectContext
from lowbit.pipeline import run, train

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


def test_every_card_declares_an_effect():
    assert all(callable(METHOD_CARDS.get(opt).effect) for opt in OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
def test_method_option_trains_and_shows_its_effect(option, make_cfg):
    """Each option, with its card's settings, trains on the tiny model and its effect is verified (not skipped)."""
    card = METHOD_CARDS.get(option)
    cfg = make_cfg([*TINY_RUN, f"{card.group}={card.option}", *card.test_overrides])
    result = train(cfg)
    assert -1.0 <= result.metrics[cfg.optimized_metric] <= 1.0
    assert result.metrics[f"{card.group}/option"] == card.option
    ctx = EffectContext(result.job.model, result.metrics, result.job.methods)
    assert card.effect(ctx) is True, f"{option}: its effect did not apply with its own test settings"
    # a resume loads checkpoints as data only (fit(weights_only=True)): every option's state must be plain data
    ckpt = Path(cfg.paths.output_dir) / "resume_check.ckpt"
    result.job.trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_mnli_reports_matched_and_mismatched(make_cfg):
    cfg = make_cfg(["+experiment=ternarybert_mnli", *TINY_RUN])
    run(cfg)
    text = Path(cfg.paths.output_dir, "summary.json").read_text()
    assert '"val/acc"' in text and '"val_mm/acc"' in text


# ---- switching any group's option on top of any experiment ------------------------------------------------------------
SWITCHABLE = (*METHOD_GROUPS, "data", "model")


def _group_keys(group: str, option: str, make_cfg) -> set[str]:
    node = make_cfg([f"{group}={option}"])[group]
    return {k for k in node.keys() if not k.startswith("_")}


@pytest.fixture(scope="module")
def common_keys(tmp_path_factory):
    """Per group: the keys every one of its options accepts."""
    from conftest import compose_train

    tmp = tmp_path_factory.mktemp("keys")
    make = lambda overrides: compose_train(overrides, tmp)  # noqa: E731
    out = {}
    for group in SWITCHABLE:
        options = [p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_")]
        out[group] = set.intersection(*(_group_keys(group, o, make) for o in options))
    return out


def _experiment_keys(name: str) -> dict[str, set[str]]:
    import yaml

    body = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    return {g: set(body[g]) for g in SWITCHABLE if isinstance(body.get(g), dict)}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_set_only_keys_every_option_of_the_group_accepts(name, common_keys):
    for group, keys in _experiment_keys(name).items():
        assert keys <= common_keys[group], (f"experiment {name} sets {sorted(keys - common_keys[group])} in {group}: "
                                            f"not every {group} option accepts them (common: {sorted(common_keys[group])})")


def _bit_assignment_patterns() -> list[str]:
    seen, out = set(), []
    for name in EXPERIMENTS:
        keys = frozenset(_experiment_keys(name).get("bit_assignment", set()))
        if keys and keys not in seen:
            seen.add(keys)
            out.append(name)
    return out


@pytest.mark.parametrize("name", _bit_assignment_patterns())
@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "bit_assignment").glob("*.yaml")))
def test_any_bit_assignment_switches_on_top_of_an_experiment(name, option, make_cfg):
    """The reported case: ``+experiment=qbert_sst2 bit_assignment=hessian`` failed with an unexpected ``bits``."""
    from lowbit.builder import build

    own = [o for o in METHOD_CARDS.get(f"bit_assignment/{option}").test_overrides if o.startswith("bit_assignment.")]
    cfg = make_cfg([f"+experiment={name}", f"bit_assignment={option}", *own])
    method = build(cfg.bit_assignment)
    set_by_card = {o.split("=", 1)[0].split(".", 1)[1] for o in own}
    for key, value in OmegaConf.to_container(make_cfg([f"+experiment={name}"]).bit_assignment).items():
        if key in _experiment_keys(name)["bit_assignment"] - set_by_card:
            assert getattr(method, key) == value, f"{option} dropped the experiment's bit_assignment.{key}"
